/*
 * ldm/core/error.h -- how library functions report failure.
 *
 * Convention: a function that can fail on user input (a file, a prompt, a
 * flag) returns an int: 0 on success, LDM_ERR (-1) on failure, after setting
 * a message with ldm_error() that names the file, tensor or argument at fault,
 * what was expected and what was found. The CLI prints ldm_last_error() and
 * exits non-zero. User input never triggers an assert or abort.
 */
#ifndef LDM_ERROR_H
#define LDM_ERROR_H

#define LDM_OK 0
#define LDM_ERR (-1)

// printf-style; sets the thread's last error message and returns LDM_ERR.
int ldm_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
// The message set by the last failing call on this thread ("" if none).
const char *ldm_last_error(void);
void ldm_clear_error(void);

#endif
