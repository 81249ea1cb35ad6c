# ldm.c -- Stable Diffusion in plain C11.
#
# `make`          builds build/sd (CLI), build/libldm.a and build/libldm.so
# `make test`     builds and runs every C test; ends with "N passed, M failed"
# `make help`     lists every target
#
# Sources are picked up by directory, so adding a module is adding a file:
#   ldm/*.c tokenizer/*.c samplers/*.c  -> the library
#   tools/*.c                           -> the `sd` CLI (one cmd_*.c per subcommand)
#   tests/test_*.c                      -> one test binary each

# ---- toolchain and flags ----------------------------------------------------
CC       := gcc
# Optimisation; `make debug` / `make check` replace it with sanitizers.
# -march=native: the machine that builds is the machine that runs.
OPT      ?= -O3 -march=native
# -std=c11 with POSIX/GNU extensions (mmap, strdup), all warnings.
CFLAGS   := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter \
            -fopenmp -fPIC -I. $(OPT) $(EXTRA_CFLAGS)
# OpenBLAS (sgemm), libpng (images), cJSON (safetensors headers, configs),
# utf8proc (Unicode data for the tokenizer), OpenMP, libm.
LDLIBS   := -lopenblas -lpng -lcjson -lutf8proc -fopenmp -lm
# Build folder; debug builds go to build/debug so both can coexist.
BUILD    ?= build

# Sanitizer flags for `make debug` and `make check`.
SANITIZE := -O0 -g3 -fno-omit-frame-pointer -fsanitize=address,undefined \
            -fno-sanitize-recover=undefined

LIB_SRC  := $(sort $(wildcard ldm/*.c tokenizer/*.c samplers/*.c))
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
SD_SRC   := $(sort $(wildcard tools/*.c))
SD_OBJ   := $(SD_SRC:%.c=$(BUILD)/obj/%.o)
TEST_SRC := $(sort $(wildcard tests/test_*.c))
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)

# The CLIP BPE vocabulary (never committed; fetched from the open_clip_torch
# wheel on the package registry and checked by sha256, see tools/fetch_vocab.sh).
VOCAB    := build/vocab/bpe_simple_vocab_16e6.txt.gz
# Python of the PyTorch reference environment (make reference-env).
REF_PY   := .venv-ref/bin/python
# Seconds each fuzz target runs under `make fuzz`.
FUZZ_SECONDS ?= 60

.PHONY: all lib test check debug deps reference-env fixtures fuzz bench clean help vocab

all: $(BUILD)/sd $(BUILD)/libldm.a $(BUILD)/libldm.so $(VOCAB)

lib: $(BUILD)/libldm.a $(BUILD)/libldm.so

# ---- dependencies -----------------------------------------------------------
# Installs the Debian packages the build needs when a header is missing
# (apt-get as root, sudo otherwise, else prints the command). Every object
# waits for it, so a fresh machine needs no manual step.
deps:
	@tools/deps.sh install

$(BUILD)/.deps-ok: tools/deps.sh
	@mkdir -p $(BUILD)
	@tools/deps.sh check || tools/deps.sh install
	@touch $@

vocab: $(VOCAB)
$(VOCAB): tools/fetch_vocab.sh
	@tools/fetch_vocab.sh $@

# ---- compile ----------------------------------------------------------------
# -MMD -MP: header dependencies, so editing a .h rebuilds what includes it.
$(BUILD)/obj/%.o: %.c | $(BUILD)/.deps-ok
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/libldm.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/libldm.so: $(LIB_OBJ)
	$(CC) -shared -o $@ $^ $(LDLIBS)

$(BUILD)/sd: $(SD_OBJ) $(BUILD)/libldm.a
	$(CC) $(CFLAGS) -o $@ $(SD_OBJ) $(BUILD)/libldm.a $(LDLIBS)

$(BUILD)/tests/%: tests/%.c tests/test.h $(BUILD)/libldm.a | $(BUILD)/.deps-ok
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libldm.a $(LDLIBS)

-include $(LIB_OBJ:.o=.d) $(SD_OBJ:.o=.d)

# ---- tests ------------------------------------------------------------------
# Every test binary, run by tests/run.sh, which prints the grand total line
# "N passed, M failed" and exits non-zero on any failure.
test: all $(TEST_BIN)
	@tests/run.sh $(BUILD)

# -O0 -g3 with AddressSanitizer + UndefinedBehaviorSanitizer into build/debug.
debug:
	@$(MAKE) --no-print-directory BUILD=build/debug OPT="$(SANITIZE)" all

# The whole test suite under ASan + UBSan.
check:
	@$(MAKE) --no-print-directory BUILD=build/debug OPT="$(SANITIZE)" test

# ---- reference (PyTorch) ----------------------------------------------------
# .venv-ref: torch (CPU), diffusers, transformers, open_clip, k-diffusion,
# pinned in tools/reference/requirements.txt. Gigabytes: never used by CI.
reference-env: $(REF_PY)
$(REF_PY): tools/reference/requirements.txt
	python3 -m venv .venv-ref
	.venv-ref/bin/pip install --upgrade pip
	.venv-ref/bin/pip install -r tools/reference/requirements.txt
	@touch $@

# Regenerates the committed fixtures under tests/fixtures/ from PyTorch.
fixtures: $(REF_PY) $(VOCAB)
	$(REF_PY) tools/reference/make_fixtures.py

# ---- fuzzing ----------------------------------------------------------------
# libFuzzer targets tests/fuzz/fuzz_*.c, built with clang + ASan, each run for
# FUZZ_SECONDS on a corpus seeded from tests/fixtures/bad (and the valid files).
FUZZ_SRC := $(sort $(wildcard tests/fuzz/fuzz_*.c))
FUZZ_BIN := $(FUZZ_SRC:tests/fuzz/%.c=build/fuzz/%)
build/fuzz/%: tests/fuzz/%.c $(LIB_SRC) | $(BUILD)/.deps-ok
	@mkdir -p build/fuzz
	clang -std=c11 -D_GNU_SOURCE -g -O1 -fopenmp -I. -fsanitize=fuzzer,address,undefined \
	    -o $@ $< $(LIB_SRC) $(LDLIBS)
fuzz: $(FUZZ_BIN)
	@for f in $(FUZZ_BIN); do \
	    name=$$(basename $$f); mkdir -p build/fuzz/corpus-$$name; \
	    echo "== $$name for $(FUZZ_SECONDS)s"; \
	    $$f -max_total_time=$(FUZZ_SECONDS) -max_len=65536 build/fuzz/corpus-$$name \
	        tests/fuzz/seeds/$$name 2>&1 | tail -n 3 || exit 1; \
	done

# ---- benchmarks (numbers, never asserted) ------------------------------------
BENCH_SRC := $(sort $(wildcard tools/bench/*.c))
$(BUILD)/bench: $(BENCH_SRC) $(BUILD)/libldm.a
	$(CC) $(CFLAGS) -o $@ $(BENCH_SRC) $(BUILD)/libldm.a $(LDLIBS)
bench: $(BUILD)/bench
	$(BUILD)/bench

clean:
	rm -rf build

help:
	@echo "make            build/sd, build/libldm.a, build/libldm.so (+ vocabulary)"
	@echo "make test       all C tests against committed PyTorch fixtures"
	@echo "make debug      -O0 -g3 ASan+UBSan build into build/debug"
	@echo "make check      the test suite under ASan+UBSan"
	@echo "make deps       install the Debian packages the build needs"
	@echo "make reference-env  PyTorch reference venv (.venv-ref)"
	@echo "make fixtures   regenerate tests/fixtures from PyTorch"
	@echo "make fuzz       libFuzzer targets for the loaders (FUZZ_SECONDS=$(FUZZ_SECONDS))"
	@echo "make bench      sgemm / op GFLOPS on this machine"
	@echo "make clean      remove build/"
