/*
 * Keyed page digests at native speed: the first 16 bytes of SHA-256(key || page) for 4 KiB pages,
 * with the key's SHA-256 state computed once and copied per page (a struct copy, where Node's
 * crypto API creates a hash object per page). OpenSSL is the one inside Node (its symbols are
 * exported by the node binary), so this builds against Node's own headers and links nothing else.
 */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <node_api.h>
#include <openssl/sha.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PAGE_SIZE 4096
#define DIGEST_BYTES 16
#define KEY_BYTES 64

static void free_state(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  free(data);
}

static int bytes_of(napi_env env, napi_value value, uint8_t **data, size_t *length) {
  napi_typedarray_type type;
  napi_value buffer;
  size_t offset;
  void *raw;
  if (napi_get_typedarray_info(env, value, &type, length, &raw, &buffer, &offset) != napi_ok) return 0;
  if (type != napi_uint8_array) return 0;
  *data = raw;
  return 1;
}

static napi_value fail(napi_env env, const char *message) {
  napi_throw_type_error(env, NULL, message);
  return NULL;
}

/* keyedState(key: Uint8Array(64)): an opaque state for digestPages. */
static napi_value keyed_state(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  uint8_t *key;
  size_t length;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1 || !bytes_of(env, argv[0], &key, &length) || length != KEY_BYTES)
    return fail(env, "keyedState: a 64-byte Uint8Array key is required");
  SHA256_CTX *state = malloc(sizeof(SHA256_CTX));
  if (state == NULL) return fail(env, "keyedState: out of memory");
  SHA256_Init(state);
  SHA256_Update(state, key, KEY_BYTES);
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
  const SHA256_CTX *keyed = state;
  unsigned char digest[SHA256_DIGEST_LENGTH];
  for (int64_t i = 0; i < count; i++) {
    SHA256_CTX ctx = *keyed;
    SHA256_Update(&ctx, pages + offset + i * PAGE_SIZE, PAGE_SIZE);
    SHA256_Final(digest, &ctx);
    memcpy(out + out_offset + i * DIGEST_BYTES, digest, DIGEST_BYTES);
  }
  return NULL;
}

/* chunk-digest.c: the memory check's chunk digests. */
napi_value chunk_digest_exports(napi_env env, napi_value exports);

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor properties[] = {
      {"keyedState", NULL, keyed_state, NULL, NULL, NULL, napi_default, NULL},
      {"digestPages", NULL, digest_pages, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof(properties) / sizeof(properties[0]), properties);
  return chunk_digest_exports(env, exports);
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
