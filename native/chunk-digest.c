/*
 * Memory-check digests of guest RAM chunks: lane-digest.h's eight lanes, seeded per migration, 32 bytes
 * per chunk. The check guards against pages QEMU failed to send, not against a forger (the guest can
 * only corrupt itself), so it needs speed more than collision resistance.
 * src/live/memory-check.ts holds the same function in TypeScript for builds without this addon.
 *
 * digestFileChunks reads and digests in libuv's thread pool (pread on a file descriptor: a guest's
 * memory file or /proc/PID/mem), so the event loop keeps running and VMs checked at once use every core.
 */
#include <errno.h>
#include <node_api.h>
#include "file-read.h"
#include "napi-args.h"
#include "lane-digest.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DIGEST_BYTES LANE_DIGEST_BYTES
#define MAX_CHUNK_BYTES (1 << 20)

static int seed_of(napi_env env, napi_value value, uint32_t seed[LANES]) {
  uint8_t *bytes;
  size_t length;
  if (!bytes_of(env, value, &bytes, &length) || length != LANES * 4) return 0;
  for (int i = 0; i < LANES; i++) seed[i] = le32(bytes + 4 * i);
  return 1;
}

/* chunkDigest(bytes: Uint8Array, seed: Uint8Array(32), out: Uint8Array(32)). */
static napi_value chunk_digest(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  uint8_t *bytes, *out;
  size_t length, out_length;
  uint32_t seed[LANES];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 3 || !bytes_of(env, argv[0], &bytes, &length) || !seed_of(env, argv[1], seed) ||
      !bytes_of(env, argv[2], &out, &out_length) || out_length < DIGEST_BYTES)
    return fail(env, "chunkDigest(bytes, seed: 32 bytes, out: 32 bytes)");
  lane_digest(bytes, length, seed, out);
  return NULL;
}

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  int fd;
  int pid;
  uint32_t seed[LANES];
  size_t count;
  int64_t *chunks; /* position, length per chunk */
  uint8_t *digests;
  int error;       /* errno of a failed read, or -1 for a short one */
  int64_t failed_at;
} file_job;

static void read_and_digest(napi_env env, void *data) {
  (void)env;
  file_job *job = data;
  uint8_t *buffer = malloc(MAX_CHUNK_BYTES);
  if (buffer == NULL) {
    job->error = ENOMEM;
    return;
  }
  for (size_t k = 0; k < job->count && job->error == 0; k++) {
    int64_t position = job->chunks[2 * k], length = job->chunks[2 * k + 1];
    job->error = read_fully(job->fd, job->pid, buffer, length, position, &job->failed_at);
    if (job->error == 0) lane_digest(buffer, (size_t)length, job->seed, job->digests + k * DIGEST_BYTES);
  }
  free(buffer);
}

static void settle(napi_env env, napi_status status, void *data) {
  file_job *job = data;
  napi_value result;
  if (status == napi_ok && job->error == 0) {
    void *copy;
    napi_create_buffer_copy(env, job->count * DIGEST_BYTES, job->digests, &copy, &result);
    napi_resolve_deferred(env, job->deferred, result);
  } else {
    napi_reject_deferred(env, job->deferred, read_error(env, job->error, job->failed_at));
  }
  napi_delete_async_work(env, job->work);
  free(job->chunks);
  free(job->digests);
  free(job);
}

/*
 * digestFileChunks(fd, chunks: Float64Array [position, length]*, seed: Uint8Array(32), pid?): a promise
 * of the chunks' digests, 32 bytes each, read with pread (or, with a pid > 0 whose /proc/PID/mem `fd`
 * is, process_vm_readv) and digested off the event loop.
 */
static napi_value digest_file_chunks(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  int32_t fd, pid = 0;
  napi_valuetype last;
  napi_typedarray_type type;
  size_t count;
  void *raw;
  napi_value buffer;
  size_t offset;
  uint32_t seed[LANES];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 3 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0 ||
      napi_get_typedarray_info(env, argv[1], &type, &count, &raw, &buffer, &offset) != napi_ok ||
      type != napi_float64_array || count % 2 != 0 || !seed_of(env, argv[2], seed))
    return fail(env, "digestFileChunks(fd, chunks: Float64Array of [position, length], seed: 32 bytes, pid?)");
  if (argc >= 4 && napi_typeof(env, argv[3], &last) == napi_ok && last != napi_undefined &&
      napi_get_value_int32(env, argv[3], &pid) != napi_ok)
    return fail(env, "digestFileChunks: pid must be a number");
  const double *pairs = raw;
  for (size_t i = 0; i < count; i += 2)
    if (!(pairs[i] >= 0 && pairs[i] <= 9007199254740991.0 && pairs[i] == (double)(int64_t)pairs[i] &&
          pairs[i + 1] > 0 && pairs[i + 1] <= MAX_CHUNK_BYTES &&
          pairs[i + 1] == (double)(int64_t)pairs[i + 1]))
      return fail(env, "digestFileChunks: a chunk is not a whole position and a length of 1 byte to 1 MiB");
  file_job *job = calloc(1, sizeof(file_job));
  if (job == NULL) return fail(env, "digestFileChunks: out of memory");
  job->fd = fd;
  job->pid = pid;
  memcpy(job->seed, seed, sizeof(seed));
  job->count = count / 2;
  job->chunks = malloc((count ? count : 1) * sizeof(int64_t));
  job->digests = malloc((job->count ? job->count : 1) * DIGEST_BYTES);
  if (job->chunks == NULL || job->digests == NULL) {
    free(job->chunks);
    free(job->digests);
    free(job);
    return fail(env, "digestFileChunks: out of memory");
  }
  for (size_t i = 0; i < count; i++) job->chunks[i] = (int64_t)pairs[i];
  napi_value promise, name;
  napi_create_promise(env, &job->deferred, &promise);
  napi_create_string_utf8(env, "vmscatter:digestFileChunks", NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, read_and_digest, settle, job, &job->work);
  napi_queue_async_work(env, job->work);
  return promise;
}

napi_value chunk_digest_exports(napi_env env, napi_value exports) {
  napi_property_descriptor properties[] = {
      {"chunkDigest", NULL, chunk_digest, NULL, NULL, NULL, napi_default, NULL},
      {"digestFileChunks", NULL, digest_file_chunks, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof(properties) / sizeof(properties[0]), properties);
  return exports;
}
