/*
 * ldm/io/fs.h -- the three file-system questions the loaders ask: is this
 * path a folder, is it a regular file, and what does this small text file
 * (a config.json) say. One home for them, so the model, the VAE and the CLI
 * discover files the same way.
 */
#ifndef LDM_FS_H
#define LDM_FS_H

#include <stddef.h>

// 1 when path names a folder (after symlinks), else 0.
int ldm_is_dir(const char *path);
// 1 when path names a regular file (after symlinks), else 0.
int ldm_is_file(const char *path);

// Largest config file ldm_read_text accepts: config.json files are a few KiB.
#define LDM_MAX_CONFIG_BYTES (1 << 20)

// The whole of a text file of at most max_bytes, NUL-terminated (free() it).
// NULL with the error set (naming the file) when it cannot be opened or read,
// or is larger than max_bytes.
char *ldm_read_text(const char *path, size_t max_bytes);

#endif
