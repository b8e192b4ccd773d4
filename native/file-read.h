/*
 * Whole reads of a file descriptor in the thread pool, and the error a promise is rejected with when
 * one stops short: shared by the scan (page-digest.c) and the memory check (chunk-digest.c).
 */
#ifndef VMSCATTER_FILE_READ_H
#define VMSCATTER_FILE_READ_H

#include <errno.h>
#include <node_api.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Reads `length` bytes at `position`: 0, or errno (-1: the file ended first), *failed_at where it stopped. */
static inline int pread_fully(int fd, uint8_t *into, int64_t length, int64_t position, int64_t *failed_at) {
  for (int64_t done = 0; done < length;) {
    ssize_t n = pread(fd, into + done, (size_t)(length - done), (off_t)(position + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      *failed_at = position + done;
      return n < 0 ? errno : -1;
    }
    done += n;
  }
  return 0;
}

/* The Error for a read that failed with pread_fully's `error` at `failed_at` (0: the work was cancelled). */
static inline napi_value read_error(napi_env env, int error, int64_t failed_at) {
  char message[160];
  if (error == -1)
    snprintf(message, sizeof(message), "end of file at position %lld", (long long)failed_at);
  else
    snprintf(message, sizeof(message), "read at position %lld: %s", (long long)failed_at,
             error ? strerror(error) : "cancelled");
  napi_value text, result;
  napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &text);
  napi_create_error(env, NULL, text, &result);
  return result;
}

#endif
