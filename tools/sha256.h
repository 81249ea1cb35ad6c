/*
 * tools/sha256.h -- SHA-256 (FIPS 180-4), for the A1111 "Model hash" that
 * `sd txt2img` writes into each PNG. Streaming: init, update as often as
 * needed, then hex.
 */
#ifndef LDM_TOOLS_SHA256_H
#define LDM_TOOLS_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct sd_sha256 {
    uint32_t h[8];      // the state
    uint8_t buf[64];    // the block being filled
    uint64_t len;       // bytes hashed so far
    int n;              // bytes in buf
} sd_sha256;

void sd_sha256_init(sd_sha256 *s);
void sd_sha256_update(sd_sha256 *s, const uint8_t *p, size_t n);
// Pads, finishes and writes the digest as 64 lower-case hex digits + '\0'.
void sd_sha256_hex(sd_sha256 *s, char out[65]);

#endif
