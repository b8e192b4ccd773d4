/*
 * Keyed page digests at native speed: the first 16 bytes of SHA-256(key || page) for 4 KiB pages,
 * with the key's SHA-256 state computed once and copied per page (a struct copy, where Node's
 * crypto API creates a hash object per page). OpenSSL is the one inside Node (its symbols are
 * exported by the node binary), so this builds against Node's own headers and links nothing else.
 *
 * Beside the digest, a page check: lane-digest.h's lanes over the page, seeded from the key, folded to
 * 64 bits. A scan keeps each page's check with its digest, and the live stream takes the scan's digest
 * for a page whose check has not changed instead of computing SHA-256 again (one hash per page).
 * The check is a tenth of the digest's cost; it is not collision-resistant, and need not be: the seed
 * is secret, a collision can only make a guest's page go as that page's earlier content (referred to
 * by its earlier digest), and the memory check before the guest runs finds any such page.
 */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <node_api.h>
#include "file-read.h"
#include "napi-args.h"
#include "lane-digest.h"
#include <openssl/sha.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PAGE_SIZE 4096
#define DIGEST_BYTES 16
#define KEY_BYTES 64
#define CHECK_BYTES 8

/* The key's SHA-256 state, and the seed of page checks derived from the key. */
typedef struct {
  SHA256_CTX sha;
  uint32_t check_seed[LANES];
} keyed_state_t;

static void digest_page(const keyed_state_t *keyed, const uint8_t *page, uint8_t *out) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256_CTX ctx = keyed->sha;
  SHA256_Update(&ctx, page, PAGE_SIZE);
  SHA256_Final(digest, &ctx);
  memcpy(out, digest, DIGEST_BYTES);
}

/* The page's check: its eight avalanched lanes folded into 64 bits; never 0, which means "none". */
static uint64_t page_check(const keyed_state_t *keyed, const uint8_t *page) {
  uint8_t lanes[LANE_DIGEST_BYTES];
  lane_digest(page, PAGE_SIZE, keyed->check_seed, lanes);
  uint64_t h = 0;
  for (int i = 0; i < LANES; i++) h = (h ^ le32(lanes + 4 * i)) * 0x9E3779B97F4A7C15ull;
  return (h ^ (h >> 29)) | 1;
}

static uint64_t load_u64(const uint8_t *p) {
  uint64_t v;
  memcpy(&v, p, sizeof(v));
  return v;
}

static void store_u64(uint8_t *p, uint64_t v) { memcpy(p, &v, sizeof(v)); }

static void free_state(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  free(data);
}

/* keyedState(key: Uint8Array(64)): an opaque state for digestPages, digestPageChecked and scanPages. */
static napi_value keyed_state(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  uint8_t *key;
  size_t length;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1 || !bytes_of(env, argv[0], &key, &length) || length != KEY_BYTES)
    return fail(env, "keyedState: a 64-byte Uint8Array key is required");
  keyed_state_t *state = malloc(sizeof(keyed_state_t));
  if (state == NULL) return fail(env, "keyedState: out of memory");
  SHA256_Init(&state->sha);
  SHA256_Update(&state->sha, key, KEY_BYTES);
  /* The check's seed: SHA-256(key || "page check"), secret as the key is. */
  unsigned char seed[SHA256_DIGEST_LENGTH];
  SHA256_CTX ctx = state->sha;
  SHA256_Update(&ctx, "page check", 10);
  SHA256_Final(seed, &ctx);
  for (int i = 0; i < LANES; i++) state->check_seed[i] = le32(seed + 4 * i);
  napi_value external;
  napi_create_external(env, state, free_state, NULL, &external);
  return external;
}

/*
 * digestPages(state, pages: Uint8Array, offset, count, out: Uint8Array, outOffset): writes the digests
 * of `count` pages at pages[offset..] to out[outOffset..], 16 bytes each.
 */
static napi_value digest_pages(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  void *state;
  uint8_t *pages, *out;
  size_t pages_length, out_length;
  int64_t offset, count, out_offset;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 6 || napi_get_value_external(env, argv[0], &state) != napi_ok ||
      !bytes_of(env, argv[1], &pages, &pages_length) ||
      napi_get_value_int64(env, argv[2], &offset) != napi_ok ||
      napi_get_value_int64(env, argv[3], &count) != napi_ok ||
      !bytes_of(env, argv[4], &out, &out_length) ||
      napi_get_value_int64(env, argv[5], &out_offset) != napi_ok)
    return fail(env, "digestPages(state, pages, offset, count, out, outOffset)");
  if (offset < 0 || count < 0 || out_offset < 0 ||
      (uint64_t)offset + (uint64_t)count * PAGE_SIZE > pages_length ||
      (uint64_t)out_offset + (uint64_t)count * DIGEST_BYTES > out_length)
    return fail(env, "digestPages: a range is outside its array");
  for (int64_t i = 0; i < count; i++)
    digest_page(state, pages + offset + i * PAGE_SIZE, out + out_offset + i * DIGEST_BYTES);
  return NULL;
}

/*
 * digestPageChecked(state, pages, offset, checks: Uint8Array, index, out): whether the page at
 * pages[offset..] still has the check checks[8 index..] (then `out` is left alone: the digest known
 * with that check applies). Otherwise writes its digest to out[0..16) and clears that check, which no
 * longer describes the page.
 */
static napi_value digest_page_checked(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  void *state;
  uint8_t *pages, *checks, *out;
  size_t pages_length, checks_length, out_length;
  int64_t offset, index;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 6 || napi_get_value_external(env, argv[0], &state) != napi_ok ||
      !bytes_of(env, argv[1], &pages, &pages_length) || !int_of(env, argv[2], &offset) ||
      !bytes_of(env, argv[3], &checks, &checks_length) || !int_of(env, argv[4], &index) ||
      !bytes_of(env, argv[5], &out, &out_length))
    return fail(env, "digestPageChecked(state, pages, offset, checks, index, out)");
  if (offset < 0 || (uint64_t)offset + PAGE_SIZE > pages_length || index < 0 ||
      (uint64_t)index * CHECK_BYTES + CHECK_BYTES > checks_length || out_length < DIGEST_BYTES)
    return fail(env, "digestPageChecked: a range is outside its array");
  const uint8_t *page = pages + offset;
  uint8_t *check = checks + index * CHECK_BYTES;
  napi_value result;
  if (load_u64(check) == page_check(state, page)) {
    napi_get_boolean(env, 1, &result);
    return result;
  }
  digest_page(state, page, out);
  store_u64(check, 0);
  napi_get_boolean(env, 0, &result);
  return result;
}

static int is_zero_page(const uint8_t *page) {
  const uint64_t *words = (const uint64_t *)page;
  uint64_t any = 0;
  for (int i = 0; i < PAGE_SIZE / 8; i++) any |= words[i];
  return any == 0;
}

/*
 * A scan's step in libuv's thread pool: optionally pread `count` pages from `fd` at `position` into
 * `pages`, then for each page either mark it zero (zeros[i] = 1, no digest) or write its digest. The
 * arrays and the key state stay referenced until the promise settles.
 */
typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref refs[5];
  keyed_state_t *keyed;
  int fd;
  int pid;
  int64_t position;
  int64_t count;
  uint8_t *pages, *digests, *zeros, *checks;
  int error;
  int64_t failed_at;
} scan_job;

static void scan_execute(napi_env env, void *data) {
  (void)env;
  scan_job *job = data;
  if (job->fd >= 0) {
    job->error =
        read_fully(job->fd, job->pid, job->pages, job->count * PAGE_SIZE, job->position, &job->failed_at);
    if (job->error != 0) return;
  }
  for (int64_t i = 0; i < job->count; i++) {
    const uint8_t *page = job->pages + i * PAGE_SIZE;
    job->zeros[i] = (uint8_t)is_zero_page(page);
    if (job->checks) store_u64(job->checks + i * CHECK_BYTES, job->zeros[i] ? 0 : page_check(job->keyed, page));
    if (!job->zeros[i]) digest_page(job->keyed, page, job->digests + i * DIGEST_BYTES);
  }
}

static void scan_complete(napi_env env, napi_status status, void *data) {
  scan_job *job = data;
  if (status == napi_ok && job->error == 0) {
    napi_value undefined;
    napi_get_undefined(env, &undefined);
    napi_resolve_deferred(env, job->deferred, undefined);
  } else {
    napi_reject_deferred(env, job->deferred, read_error(env, job->error, job->failed_at));
  }
  for (int i = 0; i < 5; i++)
    if (job->refs[i]) napi_delete_reference(env, job->refs[i]);
  napi_delete_async_work(env, job->work);
  free(job);
}

/*
 * scanPages(state, fd, position, pages: Uint8Array, count, digests: Uint8Array, zeros: Uint8Array,
 * checks?: Uint8Array, pid?): a promise; fd -1 digests what `pages` already holds. With `checks`, each
 * page's check goes to checks[8 i..] (0 for a zero page). With a pid > 0, `fd` is that process's
 * /proc/PID/mem and its memory is read with process_vm_readv instead.
 */
static napi_value scan_pages(napi_env env, napi_callback_info info) {
  size_t argc = 9;
  napi_value argv[9];
  void *state;
  int32_t fd, pid = 0;
  int64_t position, count;
  uint8_t *pages, *digests, *zeros, *checks = NULL;
  size_t pages_length, digests_length, zeros_length, checks_length = 0;
  napi_valuetype last;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 7 || napi_get_value_external(env, argv[0], &state) != napi_ok ||
      napi_get_value_int32(env, argv[1], &fd) != napi_ok ||
      napi_get_value_int64(env, argv[2], &position) != napi_ok ||
      !bytes_of(env, argv[3], &pages, &pages_length) ||
      napi_get_value_int64(env, argv[4], &count) != napi_ok ||
      !bytes_of(env, argv[5], &digests, &digests_length) || !bytes_of(env, argv[6], &zeros, &zeros_length))
    return fail(env, "scanPages(state, fd, position, pages, count, digests, zeros, checks?, pid?)");
  if (argc >= 8 && napi_typeof(env, argv[7], &last) == napi_ok && last != napi_undefined &&
      !bytes_of(env, argv[7], &checks, &checks_length))
    return fail(env, "scanPages: checks must be a Uint8Array");
  if (argc >= 9 && napi_typeof(env, argv[8], &last) == napi_ok && last != napi_undefined &&
      napi_get_value_int32(env, argv[8], &pid) != napi_ok)
    return fail(env, "scanPages: pid must be a number");
  if (fd < -1 || position < 0 || count < 0 || (uint64_t)count * PAGE_SIZE > pages_length ||
      (uint64_t)count * DIGEST_BYTES > digests_length || (uint64_t)count > zeros_length ||
      (checks != NULL && (uint64_t)count * CHECK_BYTES > checks_length))
    return fail(env, "scanPages: a range is outside its array");
  scan_job *job = calloc(1, sizeof(scan_job));
  if (job == NULL) return fail(env, "scanPages: out of memory");
  job->keyed = state;
  job->fd = fd;
  job->pid = pid;
  job->position = position;
  job->count = count;
  job->pages = pages;
  job->digests = digests;
  job->zeros = zeros;
  job->checks = checks;
  napi_create_reference(env, argv[0], 1, &job->refs[0]);
  napi_create_reference(env, argv[3], 1, &job->refs[1]);
  napi_create_reference(env, argv[5], 1, &job->refs[2]);
  napi_create_reference(env, argv[6], 1, &job->refs[3]);
  if (checks != NULL) napi_create_reference(env, argv[7], 1, &job->refs[4]);
  napi_value promise, name;
  napi_create_promise(env, &job->deferred, &promise);
  napi_create_string_utf8(env, "vmscatter:scanPages", NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, scan_execute, scan_complete, job, &job->work);
  napi_queue_async_work(env, job->work);
  return promise;
}

/* chunk-digest.c: the memory check's chunk digests. */
napi_value chunk_digest_exports(napi_env env, napi_value exports);
/* transport.c: the transport's packet AEAD and socket buffers. */
napi_value transport_exports(napi_env env, napi_value exports);
/* page-records.c: a batch of page records (uniform, LZ4 or raw) in one call. */
napi_value page_records_exports(napi_env env, napi_value exports);
/* zstd-batch.c: zstd over a batch of pages, through the system's libzstd when it has one. */
napi_value zstd_batch_exports(napi_env env, napi_value exports);

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor properties[] = {
      {"keyedState", NULL, keyed_state, NULL, NULL, NULL, napi_default, NULL},
      {"digestPages", NULL, digest_pages, NULL, NULL, NULL, napi_default, NULL},
      {"digestPageChecked", NULL, digest_page_checked, NULL, NULL, NULL, napi_default, NULL},
      {"scanPages", NULL, scan_pages, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof(properties) / sizeof(properties[0]), properties);
  return zstd_batch_exports(env, page_records_exports(env, transport_exports(env, chunk_digest_exports(env, exports))));
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
