# ldm.c -- Stable Diffusion in plain C11.
#
# `make`          builds build/sd (CLI), build/libldm.a and build/libldm.so
# `make test`     builds and runs every C test; ends with "N passed, M failed"
# `make help`     lists every target
#
# Sources are picked up by directory, so adding a module is adding a file:
#   ldm/*.c ldm/*/*.c tokenizer/*.c samplers/*.c -> the library
#     (+ one of ldm/train/dist/: dist_single.c, or dist_mpi.c with MPI=1)
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
# utf8proc (Unicode data for the tokenizer), zlib (the gzip vocabulary), OpenMP, libm.
LDLIBS   := -lopenblas -lpng -lcjson -lutf8proc -lz -fopenmp -lm
# Build folder; debug builds go to build/debug and MPI builds (MPI=1) to
# build/mpi, so they all coexist. Objects go to $(OBJ).
ifeq ($(MPI),1)
BUILD    ?= build/mpi
endif
BUILD    ?= build
OBJ      ?= $(BUILD)/obj

# Sanitizer flags for `make debug` and `make check`.
SANITIZE := -O0 -g3 -fno-omit-frame-pointer -fsanitize=address,undefined \
            -fno-sanitize-recover=undefined

# ---- data parallel over processes (ldm/train/dist.h): variables ---------------
# The process group has two implementations; each build links exactly one:
#   ldm/train/dist/dist_single.c  one process, world 1 (the default: needs nothing)
#   ldm/train/dist/dist_mpi.c     Open MPI: `make MPI=1` builds sd, libldm and the
#                                 tests into build/mpi with mpicc, to run as
#                                 `mpirun -np N build/mpi/sd train ...`
# (ldm/train/dist/ is one level deeper than LIB_SRC's wildcard reaches, so the
# chosen file is added by name.) Targets `test-mpi`, `mpi-tests` further down.
MPICC    ?= mpicc
MPIRUN   ?= mpirun
ifeq ($(MPI),1)
ifeq ($(shell command -v $(MPICC) 2>/dev/null),)
$(error make MPI=1: $(MPICC) not found: install Open MPI (tools/deps.sh install, or apt-get install libopenmpi-dev openmpi-bin))
endif
CC       := $(MPICC)
DIST_SRC := ldm/train/dist/dist_mpi.c
MPI_BUILD := $(BUILD)
else
DIST_SRC := ldm/train/dist/dist_single.c
MPI_BUILD := $(BUILD)/mpi
endif
# Both mpicc and mpirun found: `make test` also runs the 2-process test.
HAVE_MPI := $(and $(shell command -v $(MPICC) 2>/dev/null),$(shell command -v $(MPIRUN) 2>/dev/null))

LIB_SRC  := $(sort $(wildcard ldm/*.c ldm/*/*.c tokenizer/*.c samplers/*.c)) $(DIST_SRC)
LIB_OBJ  := $(LIB_SRC:%.c=$(OBJ)/%.o)
SD_SRC   := $(sort $(wildcard tools/*.c))
SD_OBJ   := $(SD_SRC:%.c=$(OBJ)/%.o)
TEST_SRC := $(sort $(wildcard tests/test_*.c))
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%) $(BUILD)/tests/test_docs_links \
            $(BUILD)/tests/test_bad_inputs $(BUILD)/tests/test_mpi

# ---- CUDA backend: variables (targets `cuda`, `test-cuda` further down) ------
# `make cuda` re-runs make with CUDA=1 BUILD=build/cuda: the same library plus
# ldm/backend/ops_cuda.cu compiled by nvcc and linked with cuBLAS + the CUDA runtime.
# Without CUDA=1 nothing here applies: the default build never needs CUDA
# (the `cuda-emu` backend, which runs the CUDA kernels on the CPU, is plain C).
CUDA_HOME ?= /usr/local/cuda
NVCC      ?= $(firstword $(wildcard $(CUDA_HOME)/bin/nvcc) nvcc)
# GPU generations compiled for (sm_80 A100, sm_86/89 RTX 30/40 + L4, sm_90
# H100), plus PTX of the newest so later GPUs can JIT it.
CUDA_ARCH ?= 80 86 89 90
NVCCFLAGS := -O3 -std=c++20 -I. $(foreach a,$(CUDA_ARCH),-gencode arch=compute_$(a),code=sm_$(a)) \
             -gencode arch=compute_$(lastword $(CUDA_ARCH)),code=compute_$(lastword $(CUDA_ARCH)) \
             -Xcompiler -Wall,-Wextra,-Wno-unused-parameter,-fPIC -Werror all-warnings
ifeq ($(CUDA),1)
LIB_OBJ  += $(OBJ)/ldm/backend/ops_cuda.o
# -u: ops.c refers to ldm_ops_cuda only weakly, which alone would not pull
# ops_cuda.o out of libldm.a; this makes every program of this build link it.
LDLIBS   += -Wl,-u,ldm_ops_cuda -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 \
            -lcublas -lcudart -lstdc++
endif

# The CLIP BPE vocabulary (never committed; fetched from the open_clip_torch
# wheel on the package registry and checked by sha256, see tools/fetch_vocab.sh).
VOCAB    := build/vocab/bpe_simple_vocab_16e6.txt.gz
# Python of the PyTorch reference environment (make reference-env).
REF_PY   := .venv-ref/bin/python
# Seconds each fuzz target runs under `make fuzz`.
FUZZ_SECONDS ?= 60

.PHONY: all lib test check debug deps reference-env fixtures fuzz bench clean help vocab cuda test-cuda

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
$(OBJ)/%.o: %.c | $(BUILD)/.deps-ok
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

# The docs' links into the code land on what their titles name (a script run
# by tests/run.sh like the test binaries; tools/docs_links.py says how).
$(BUILD)/tests/test_docs_links: tools/docs_links.py
	@mkdir -p $(dir $@)
	@printf '#!/bin/sh\nexec python3 "%s" --check\n' "$(abspath tools/docs_links.py)" > $@
	@chmod +x $@

# The list of bad invocations (tests/bad_inputs.sh) against this build's sd:
# under `make check` each one also runs under ASan+UBSan.
$(BUILD)/tests/test_bad_inputs: tests/bad_inputs.sh
	@mkdir -p $(dir $@)
	@printf '#!/bin/sh\nexec "%s" "%s"\n' "$(abspath tests/bad_inputs.sh)" "$(abspath $(BUILD)/sd)" > $@
	@chmod +x $@

# The test over 2 MPI processes (tests/mpi.sh) as one more test of the suite:
# it runs the MPI build's binaries in $(MPI_BUILD), or prints
# "skipped: mpirun not found" where Open MPI is not installed.
$(BUILD)/tests/test_mpi: tests/mpi.sh
	@mkdir -p $(dir $@)
	@printf '#!/bin/sh\nexec "%s" "%s" "%s"\n' "$(abspath tests/mpi.sh)" "$(abspath $(MPI_BUILD))" \
	    "$(abspath $(BUILD)/sd)" > $@
	@chmod +x $@

# ---- tests ------------------------------------------------------------------
# Every test binary, run by tests/run.sh, which prints the grand total line
# "N passed, M failed" and exits non-zero on any failure. Where Open MPI is
# installed, the MPI build's binaries too (mpi-tests), for test_mpi.
test: all $(TEST_BIN) $(if $(HAVE_MPI),mpi-tests)
	@tests/run.sh $(BUILD)

# ---- data parallel over processes (MPI): targets -----------------------------
# `mpi-tests`: sd and tests/test_dist of the MPI build in $(MPI_BUILD). It
# shares this build's objects ($(OBJ), compiled first): only dist_mpi.c is
# compiled again, and the programs are linked by mpicc.
# `make test-mpi`: those, then tests/mpi.sh: `mpirun -np 2` against one
# process, this build's sd (skipped, and successful, without Open MPI).
.PHONY: mpi-tests test-mpi
mpi-tests: $(if $(filter 1,$(MPI)),,$(LIB_OBJ) $(SD_OBJ))
	@$(MAKE) --no-print-directory MPI=1 BUILD=$(MPI_BUILD) OBJ=$(OBJ) \
	    $(MPI_BUILD)/sd $(MPI_BUILD)/tests/test_dist
test-mpi: $(BUILD)/sd $(if $(HAVE_MPI),mpi-tests)
	@tests/mpi.sh $(MPI_BUILD) $(BUILD)/sd

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

# Full-size random models (real SD1/SD2 shapes and key layouts, generated and
# cached under build/reference/) against PyTorch: every
# tools/reference/test_reference_*.py in turn. Slow (minutes); not part of `test`.
.PHONY: test-reference
test-reference: $(BUILD)/sd $(REF_PY)
	@rc=0; for s in tools/reference/test_reference_*.py; do \
	    echo "== $$s"; $(REF_PY) $$s --sd $(BUILD)/sd || rc=1; \
	done; exit $$rc

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
	    $$f -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -artifact_prefix=build/fuzz/$$name- \
	        build/fuzz/corpus-$$name tests/fuzz/seeds/$$name > build/fuzz/$$name.log 2>&1; \
	    rc=$$?; tail -n 3 build/fuzz/$$name.log; \
	    if [ $$rc -ne 0 ]; then echo "$$name failed (exit $$rc): build/fuzz/$$name.log, crash input build/fuzz/$$name-*"; exit 1; fi; \
	done

# ---- benchmarks (numbers, never asserted) ------------------------------------
BENCH_SRC := $(sort $(wildcard tools/bench/*.c))
$(BUILD)/bench: $(BENCH_SRC) $(BUILD)/libldm.a
	$(CC) $(CFLAGS) -o $@ $(BENCH_SRC) $(BUILD)/libldm.a $(LDLIBS)
# `make bench`: the op kernels and one full-size SD1 UNet step (sgemm roofline,
# seconds, GFLOPS, fraction of the roofline, activation peak); then, where the
# reference venv exists (it generates the full-size random models once, under
# build/reference/): the VAE decode at 512x512, peak RSS of a whole 1-step
# txt2img at 512x512 and 512x1024 in the default and --low-memory modes, and the
# same UNet step in PyTorch and OpenVINO (tools/bench/peers.sh). Numbers only.
bench: $(BUILD)/bench $(BUILD)/sd
	$(BUILD)/bench
	@if [ -x $(REF_PY) ]; then \
	    SD=$(BUILD)/sd tools/bench/bench_vae.sh 512 untiled; \
	    for s in 512x512 512x1024; do for m in "" --low-memory; do \
	        SD=$(BUILD)/sd tools/bench/bench_memory.sh $$s $$m; done; done; \
	    SD=$(BUILD)/sd tools/bench/peers.sh; \
	else echo "bench: no $(REF_PY) (make reference-env): VAE, whole-run memory and peers skipped"; fi

# ---- CUDA backend: targets -----------------------------------------------------
# The op and model cases shared by the emulated (default) and the GPU test.
$(BUILD)/tests/test_cuda_emu $(BUILD)/tests/cuda/test_cuda: tests/cuda/op_cases.h tests/cuda/model_cases.h

# The emulator (backend cuda-emu) starts every block's __shared__ memory -- in
# C, locals of the kernel's once-per-block call -- as 0xfefefefe bytes
# (-1.7e38 as a float), as a GPU starts it as garbage, so a kernel reading a
# slot no thread wrote gets a ruined result, not a lucky one (cuda_emu.h).
# gcc cannot see that a for_each_thread loop writes shared memory before the
# code after it reads it (the loop runs blockDim.x times, never 0): without
# -Wno-maybe-uninitialized it warns about every reduction.
$(OBJ)/ldm/backend/ops_cuda_emu.o: CFLAGS += -ftrivial-auto-var-init=pattern -Wno-maybe-uninitialized

# ldm/backend/ops_cuda.cu -> object, by nvcc (warnings are errors; -MMD: header deps).
$(OBJ)/%.o: %.cu | $(BUILD)/.deps-ok
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -MMD -MP -c $< -o $@

# build/cuda/sd (with `--backend cuda`), build/cuda/libldm.a, build/cuda/libldm.so
cuda:
	@command -v $(NVCC) >/dev/null 2>&1 || { echo "make cuda: nvcc not found (looked for \
	$(NVCC)): install the CUDA toolkit or set CUDA_HOME=/path/to/cuda"; exit 1; }
	@$(MAKE) --no-print-directory CUDA=1 BUILD=build/cuda all build/cuda/tools/softmax_forward

# Teaching kernels (tools/cuda/*.cu, llm.c style): numbered versions of one
# op, each checked against a CPU reference and timed. Built by `make cuda`.
$(BUILD)/tools/%: tools/cuda/%.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -o $@ $< -Xlinker -rpath,$(CUDA_HOME)/lib64

# Every op and the tiny models on `cuda` against `ref`, PyTorch and `cpu`
# (tests/cuda/test_cuda.c); without a GPU it prints "no CUDA device: skipped"
# and succeeds (the kernels and launches then run only on the CPU, in
# tests/test_cuda_emu.c of `make test`).
test-cuda: cuda
	@$(MAKE) --no-print-directory CUDA=1 BUILD=build/cuda build/cuda/tests/cuda/test_cuda
	build/cuda/tests/cuda/test_cuda

# ---- notebooks and course exercises (notebooks/, docs/exercises/) ----------------
# `make notebooks`: a light venv (build/venv-nb: numpy, matplotlib, nbclient,
# nbformat, ipykernel from the package registry; no torch), a check that the
# ctypes mirrors of notebooks/ldm_py.py match the C headers, then every
# notebooks/NN-*.ipynb executed headlessly on the committed tiny models; fails on
# any cell error, on a committed notebook whose cells differ from
# notebooks/make_notebooks.py, or one committed without outputs. Executed copies
# go to build/notebooks/. Not part of `make test`.
# `make notebooks-render`: the same, from make_notebooks.py's cells, saving each
# executed notebook in place with its outputs (the committed notebooks carry
# their figures, reduced to small PNGs, so a reader needs no venv to see them).
# `make exercise-N`: build with docs/exercises/NN-*/'s function in place of the
# project's and run that module's test (SOLUTION=1: the project's own code);
# `make exercises-check`: every starting point fails and every solution passes.
.PHONY: notebooks notebooks-render notebooks-layout exercises-check
NB_VENV := build/venv-nb
NB_PY   := $(NB_VENV)/bin/python
$(NB_PY): notebooks/requirements.txt
	python3 -m venv $(NB_VENV)
	$(NB_PY) -m pip install -q -r notebooks/requirements.txt
	@touch $@
notebooks-layout: $(BUILD)/libldm.so $(BUILD)/sd $(VOCAB) $(NB_PY)
	@mkdir -p $(BUILD)/nb
	@$(NB_PY) notebooks/ldm_py.py --layout-c > $(BUILD)/nb/layout_check.c
	@$(CC) -std=c11 -D_GNU_SOURCE -I. -o $(BUILD)/nb/layout_check $(BUILD)/nb/layout_check.c
	@$(BUILD)/nb/layout_check > $(BUILD)/nb/layout.json
	@$(NB_PY) notebooks/ldm_py.py $(BUILD)/nb/layout.json
notebooks: notebooks-layout
	@LDM_LIB=$(abspath $(BUILD)/libldm.so) LDM_SD=$(abspath $(BUILD)/sd) $(NB_PY) notebooks/run_notebooks.py --out $(BUILD)/notebooks
notebooks-render: notebooks-layout
	@LDM_LIB=$(abspath $(BUILD)/libldm.so) LDM_SD=$(abspath $(BUILD)/sd) $(NB_PY) notebooks/run_notebooks.py --render --out $(BUILD)/notebooks
# `make docs-figures`: the figures in docs/ drawn from the C library (schedule.png;
# trajectory.png, cfg_sweep.png, latents.png from runs of the tiny model; and
# those of `make figures-unet`).
# `make docs-links`: recompute every docs/ link's #L line anchor (and a
# "file.c:NN" link text) from the symbol its title names, after code moved.
.PHONY: docs-links
docs-links:
	python3 tools/docs_links.py --fix
.PHONY: docs-figures
docs-figures: $(BUILD)/libldm.so $(NB_PY) figures-unet
	LDM_LIB=$(abspath $(BUILD)/libldm.so) $(NB_PY) docs/figures/plot_schedule.py
	LDM_LIB=$(abspath $(BUILD)/libldm.so) $(NB_PY) docs/figures/plot_sampling.py
# `make sampler-study`: the convergence lab of docs/06-samplers.md: every sampler
# on the analytic model (samplers/analytic.h) at 3..1000 steps against the exact
# ODE solution (docs/figures/sampler_study.c -> docs/figures/sampler-study.tsv),
# drawn into docs/figures/sampler-study.png. About half a minute of CPU.
.PHONY: sampler-study
$(BUILD)/sampler_study: docs/figures/sampler_study.c $(BUILD)/libldm.a
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libldm.a $(LDLIBS)
sampler-study: $(BUILD)/sampler_study $(NB_PY)
	$(BUILD)/sampler_study docs/figures/sampler-study.tsv
	$(NB_PY) docs/figures/plot_sampler_study.py docs/figures/sampler-study.tsv docs/figures/sampler-study.png
# `make figures-unet`: the UNet and transformer-block figures of docs/05-unet.md
# from the shapes the library reports (docs/figures/unet_shapes.c: the block
# table of SD1 and of the tiny model walked with its skip stack, the tiny
# model's walk checked against a real forward pass -> unet-shapes.tsv,
# transformer-shapes.tsv), drawn by plot_unet.py into unet-sd1.png,
# unet-tiny.png and transformer-block.png. A few seconds of CPU.
.PHONY: figures-unet
$(BUILD)/unet_shapes: docs/figures/unet_shapes.c $(BUILD)/libldm.a
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libldm.a $(LDLIBS)
figures-unet: $(BUILD)/unet_shapes $(NB_PY)
	$(BUILD)/unet_shapes docs/figures/unet-shapes.tsv docs/figures/transformer-shapes.tsv
	$(NB_PY) docs/figures/plot_unet.py docs/figures/unet-shapes.tsv docs/figures/transformer-shapes.tsv docs/figures
# `make sampler-study-tiny`: the same lab on the trained tiny model: every
# sampler at 3..200 steps against a 1000-step DPM++ 2M solve of the same
# prompts and noise (docs/figures/sampler_study_tiny.c ->
# docs/figures/sampler-study-tiny.tsv, drawn into sampler-study-tiny.png).
# A few minutes of CPU.
.PHONY: sampler-study-tiny
$(BUILD)/sampler_study_tiny: docs/figures/sampler_study_tiny.c $(BUILD)/libldm.a
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libldm.a $(LDLIBS)
sampler-study-tiny: $(BUILD)/sampler_study_tiny $(NB_PY) $(VOCAB)
	$(BUILD)/sampler_study_tiny docs/figures/sampler-study-tiny.tsv
	$(NB_PY) docs/figures/plot_sampler_study_tiny.py docs/figures/sampler-study-tiny.tsv docs/figures/sampler-study-tiny.png
exercise-%: $(VOCAB)
	@docs/exercises/run.sh $* $(if $(SOLUTION),--solution)
exercises-check: $(VOCAB)
	@docs/exercises/run.sh --check-all

# ---- the embedded tiny model (tools/train/, tools/tiny-model/) -------------------
# `make demo`: build, then draw with the committed tiny model (64x64, DDIM 20
# steps, guidance 5) into outputs/demo/: the default prompts (English and
# Japanese), a prompt of a shape it never learned ("bar") without and with its
# LoRA (tools/tiny-model/lora/bar.safetensors), and an inpainting of a test
# image by the 9-channel variant (tools/tiny-model-inpaint).
# `make train-tiny`: retrain it from scratch in PyTorch (.venv-ref), seeded:
# procedural dataset -> autoencoder -> latents -> text-conditioned UNet ->
# fp16 diffusers folder in TINY_OUT with loss_curves.png and training.json.
# TINY_OUT=tools/tiny-model replaces the committed model; TINY_ARGS adds flags
# of tools/train/train_tiny.py (e.g. TINY_ARGS="--unet-steps 6000 --resume").
# `make train-lora` / `make train-inpaint`: the LoRA and the inpainting variant
# from the committed model (a few CPU minutes each) into build/ (LORA_OUT,
# INPAINT_OUT; point them at tools/... to replace the committed ones).
.PHONY: demo train-tiny train-lora train-inpaint
TINY_MODEL := tools/tiny-model
TINY_OUT   ?= build/tiny-model
TINY_ARGS  ?=
LORA_OUT   ?= build/tiny-lora/bar.safetensors
INPAINT_OUT ?= build/tiny-model-inpaint
DEMO_EN    := a red circle on the left
DEMO_JA    := 右に青い四角
DEMO_BAR   := a red bar in the center
DEMO_INPAINT := a red circle to the right of a blue square
DEMO_FLAGS := --ddim_steps 20 --scale 5 --n_samples 4 --n_iter 1 --seed 1
demo: $(BUILD)/sd $(VOCAB)
	@rm -rf outputs/demo/en outputs/demo/ja outputs/demo/lora-off outputs/demo/lora-on outputs/demo/inpaint
	@mkdir -p outputs/demo
	$(BUILD)/sd txt2img --ckpt $(TINY_MODEL) --prompt "$(DEMO_EN)" --H 64 --W 64 $(DEMO_FLAGS) --outdir outputs/demo/en
	$(BUILD)/sd txt2img --ckpt $(TINY_MODEL) --prompt "$(DEMO_JA)" --H 64 --W 64 $(DEMO_FLAGS) --outdir outputs/demo/ja
	$(BUILD)/sd txt2img --ckpt $(TINY_MODEL) --prompt "$(DEMO_BAR)" --H 64 --W 64 $(DEMO_FLAGS) --outdir outputs/demo/lora-off
	$(BUILD)/sd txt2img --ckpt $(TINY_MODEL) --prompt "$(DEMO_BAR) <lora:bar:1>" --lora-dir $(TINY_MODEL)/lora \
	    --H 64 --W 64 $(DEMO_FLAGS) --outdir outputs/demo/lora-on
	$(BUILD)/sd inpaint --ckpt tools/tiny-model-inpaint --init-img tests/fixtures/tiny/inpaint_0_init.png \
	    --mask tests/fixtures/tiny/inpaint_0_mask.png --prompt "$(DEMO_INPAINT)" $(DEMO_FLAGS) \
	    --outdir outputs/demo/inpaint
	@echo "demo: \"$(DEMO_EN)\" -> outputs/demo/en/grid-0000.png (samples in outputs/demo/en/samples/)"
	@echo "demo: \"$(DEMO_JA)\" -> outputs/demo/ja/grid-0000.png (samples in outputs/demo/ja/samples/)"
	@echo "demo: \"$(DEMO_BAR)\", a shape the model never saw -> outputs/demo/lora-off/grid-0000.png"
	@echo "demo: the same with <lora:bar:1> (tools/tiny-model/lora/bar.safetensors) -> outputs/demo/lora-on/grid-0000.png"
	@echo "demo: inpainting tests/fixtures/tiny/inpaint_0_init.png where inpaint_0_mask.png is white,"
	@echo "      \"$(DEMO_INPAINT)\" (tools/tiny-model-inpaint) -> outputs/demo/inpaint/grid-0000.png"
train-tiny: $(REF_PY)
	nice $(REF_PY) tools/train/train_tiny.py --work build/tiny-train --out $(TINY_OUT) $(TINY_ARGS)
train-lora: $(REF_PY)
	nice $(REF_PY) tools/train/train_lora.py --model $(TINY_MODEL) --out $(LORA_OUT)
train-inpaint: $(REF_PY)
	nice $(REF_PY) tools/train/train_inpaint.py --model $(TINY_MODEL) --out $(INPAINT_OUT)

# `make train-tiny-c`: the same two stages in C (`sd train`, train_tiny.py's
# recipe): stage 1 into build/tiny-c/vae, stage 2 on its VAE into
# build/tiny-c/model (a diffusers folder: sd txt2img --ckpt build/tiny-c/model).
# --resume: an interrupted run continues from its last checkpoint (every 100
# steps); a finished stage is only exported again. TRAIN_C_ARGS adds flags to both.
# Data parallel like train_tiny.py's --workers: with Open MPI installed, each
# stage runs as TRAIN_NP processes of one thread each (default: the largest
# power of two up to the number of cores, at most 8, so that the batches of 32
# and 8 split evenly; the result equals one process's up to summation order,
# docs/14). TRAIN_NP=1, or no Open MPI: one process with OpenMP threads.
TRAIN_NP ?= $(shell n=$$(nproc 2>/dev/null || echo 1); p=1; \
              while [ $$((p * 2)) -le $$n ] && [ $$p -lt 8 ]; do p=$$((p * 2)); done; echo $$p)
MPI_RUN_FLAGS := $(if $(filter 0,$(shell id -u)),--allow-run-as-root) \
                 --mca pml ob1 --mca btl self,vader --mca btl_vader_single_copy_mechanism none
TRAIN_MPI := $(and $(HAVE_MPI),$(filter-out 1,$(TRAIN_NP)))
TRAIN_SD  := $(if $(TRAIN_MPI),env OMP_NUM_THREADS=1 $(MPIRUN) -np $(TRAIN_NP) $(MPI_RUN_FLAGS) \
               -x OMP_NUM_THREADS $(MPI_BUILD)/sd,$(BUILD)/sd)
.PHONY: train-tiny-c
train-tiny-c: $(BUILD)/sd $(VOCAB) $(if $(TRAIN_MPI),mpi-tests)
	nice $(TRAIN_SD) train --stage vae --out build/tiny-c/vae --resume $(TRAIN_C_ARGS)
	nice $(TRAIN_SD) train --stage unet --init build/tiny-c/vae --out build/tiny-c/model --resume \
	    $(TRAIN_C_ARGS)

# `make install PREFIX=DIR` (default /usr/local): DIR/bin/sd, and beside it the
# data it finds relative to itself (/proc/self/exe), so it runs from any folder:
# DIR/share/ldm.c/tiny-model (the model without --ckpt) and
# DIR/share/ldm.c/vocab/ (the CLIP vocabulary).
PREFIX ?= /usr/local
.PHONY: install
install: all
	install -d "$(PREFIX)/bin" "$(PREFIX)/share/ldm.c/vocab" "$(PREFIX)/share/ldm.c/tiny-model"
	install -m 755 $(BUILD)/sd "$(PREFIX)/bin/sd"
	install -m 644 $(VOCAB) "$(PREFIX)/share/ldm.c/vocab/"
	cp -R tools/tiny-model/. "$(PREFIX)/share/ldm.c/tiny-model/"

clean:
	rm -rf build

help:
	@echo "make            build/sd, build/libldm.a, build/libldm.so (+ vocabulary)"
	@echo "make test       all C tests against committed PyTorch fixtures"
	@echo "make debug      -O0 -g3 ASan+UBSan build into build/debug"
	@echo "make check      the test suite under ASan+UBSan"
	@echo "make install PREFIX=DIR  sd, the tiny model and the vocabulary under DIR"
	@echo "make deps       install the Debian packages the build needs"
	@echo "make reference-env  PyTorch reference venv (.venv-ref)"
	@echo "make fixtures   regenerate tests/fixtures from PyTorch"
	@echo "make test-reference  full-size random models vs PyTorch (slow)"
	@echo "make fuzz       libFuzzer targets for the loaders (FUZZ_SECONDS=$(FUZZ_SECONDS))"
	@echo "make bench      kernels, UNet step vs sgemm roofline, VAE, peak RSS, peers (numbers only)"
	@echo "make cuda       build/cuda/sd + libldm with the CUDA backend (nvcc, cuBLAS)"
	@echo "make test-cuda  every op on the GPU against ref (skips without a GPU)"
	@echo "make MPI=1      sd and libldm with data parallel over MPI processes, into build/mpi (Open MPI)"
	@echo "make test-mpi   2 MPI processes against one process (skips without Open MPI)"
	@echo "make docs-links recompute the docs' line anchors into the code from their titles"
	@echo "make docs-figures  regenerate docs/figures/*.png from the C library"
	@echo "make sampler-study  the samplers' convergence lab on the analytic model (docs/06)"
	@echo "make figures-unet  the UNet / transformer-block figures with their shapes (docs/05)"
	@echo "make sampler-study-tiny  the same lab on the trained tiny model (docs/06)"
	@echo "make notebooks  execute every notebook headlessly (light venv build/venv-nb)"
	@echo "make notebooks-render  execute every notebook and save it with its outputs (commit them)"
	@echo "make exercise-N course exercise N against the project's tests (SOLUTION=1: the solution)"
	@echo "make exercises-check  every exercise: starting point fails, solution passes"
	@echo "make demo       draw the demo prompts with the embedded tiny model, its LoRA and its inpainting variant into outputs/demo/"
	@echo "make train-tiny retrain the tiny model (PyTorch, CPU; TINY_OUT=$(TINY_OUT))"
	@echo "make train-lora the tiny model's bar LoRA (PyTorch, CPU; LORA_OUT=$(LORA_OUT))"
	@echo "make train-inpaint its 9-channel inpainting variant (INPAINT_OUT=$(INPAINT_OUT))"
	@echo "make train-tiny-c the tiny model trained in C by sd train, both stages (build/tiny-c/model)"
	@echo "make clean      remove build/"
