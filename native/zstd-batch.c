/*
 * zstd over a whole batch of pages, through the system's libzstd, opened at run time (dlopen). Per-page
 * LZ4 cannot use what pages share with their neighbours; zstd over a run of a few hundred pages sends
 * about a quarter fewer bytes of real guest memory for two thirds of LZ4's speed (bench:compression).
 * Opened rather than linked so that building the addon needs no zstd headers and a machine without the
 * library still runs: zstdContext then returns undefined and the caller keeps per-page LZ4. The few
 * functions used are zstd's stable one-shot API, declared here as libzstd.so.1 exports them.
 *
 * Input to zstdDecompress comes off the network: the one-shot decoder writes only within the capacity
 * it is given and fails (a zstd error code, returned here as -1) on anything else.
 */
#include <node_api.h>
#include "napi-args.h"
#include <dlfcn.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct zstd_api {
  void *(*create_cctx)(void);
  size_t (*free_cctx)(void *);
  void *(*create_dctx)(void);
  size_t (*free_dctx)(void *);
  size_t (*compress_cctx)(void *, void *, size_t, const void *, size_t, int);
  size_t (*decompress_dctx)(void *, void *, size_t, const void *, size_t);
  unsigned (*is_error)(size_t);
} zstd_api;

/* Filled once by the first zstdContext of the process; a library that is absent or incomplete leaves
 * it empty. Threads that race here each store the same pointers before publishing the state. */
static zstd_api api;
static int api_state; /* 0: not tried, 1: loaded, -1: absent */

static int load_api(void) {
  int state = __atomic_load_n(&api_state, __ATOMIC_ACQUIRE);
  if (state != 0) return state == 1;
  void *library = dlopen("libzstd.so.1", RTLD_NOW | RTLD_LOCAL);
  if (library == NULL) {
    __atomic_store_n(&api_state, -1, __ATOMIC_RELEASE);
    return 0;
  }
  zstd_api loaded = {
      (void *(*)(void))dlsym(library, "ZSTD_createCCtx"),
      (size_t(*)(void *))dlsym(library, "ZSTD_freeCCtx"),
      (void *(*)(void))dlsym(library, "ZSTD_createDCtx"),
      (size_t(*)(void *))dlsym(library, "ZSTD_freeDCtx"),
      (size_t(*)(void *, void *, size_t, const void *, size_t, int))dlsym(library, "ZSTD_compressCCtx"),
      (size_t(*)(void *, void *, size_t, const void *, size_t))dlsym(library, "ZSTD_decompressDCtx"),
      (unsigned (*)(size_t))dlsym(library, "ZSTD_isError"),
  };
  if (!loaded.create_cctx || !loaded.free_cctx || !loaded.create_dctx || !loaded.free_dctx ||
      !loaded.compress_cctx || !loaded.decompress_dctx || !loaded.is_error) {
    __atomic_store_n(&api_state, -1, __ATOMIC_RELEASE);
    return 0;
  }
  api = loaded;
  __atomic_store_n(&api_state, 1, __ATOMIC_RELEASE);
  return 1;
}

/* One compression and one decompression context, reused across calls (creating one costs more than
 * compressing a small batch); one per JavaScript realm, so never shared between threads. */
typedef struct zstd_context {
  void *cctx;
  void *dctx;
  int level;
} zstd_context;

static void free_context(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  zstd_context *context = data;
  api.free_cctx(context->cctx);
  api.free_dctx(context->dctx);
  free(context);
}

/* zstdContext(level): an opaque context, or undefined when libzstd.so.1 is not on this machine. */
static napi_value zstd_context_new(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], result;
  int64_t level;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1 || !int_of(env, argv[0], &level) || level < -7 || level > 19)
    return fail(env, "zstdContext(level): a level from -7 to 19");
  if (!load_api()) {
    napi_get_undefined(env, &result);
    return result;
  }
  zstd_context *context = malloc(sizeof(zstd_context));
  if (context == NULL) return fail(env, "zstdContext: out of memory");
  context->cctx = api.create_cctx();
  context->dctx = api.create_dctx();
  context->level = (int)level;
  if (context->cctx == NULL || context->dctx == NULL) {
    if (context->cctx) api.free_cctx(context->cctx);
    if (context->dctx) api.free_dctx(context->dctx);
    free(context);
    return fail(env, "zstdContext: out of memory");
  }
  napi_create_external(env, context, free_context, NULL, &result);
  return result;
}

static int context_args(napi_env env, napi_callback_info info, zstd_context **context, uint8_t **src,
                        size_t *src_length, uint8_t **dst, size_t *dst_length) {
  size_t argc = 3;
  napi_value argv[3];
  void *external;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 3 || napi_get_value_external(env, argv[0], &external) != napi_ok ||
      !bytes_of(env, argv[1], src, src_length) || !bytes_of(env, argv[2], dst, dst_length))
    return 0;
  *context = external;
  return 1;
}

/* zstdCompress(context, src, dst): the frame's length in dst, or 0 when it does not fit there. */
static napi_value zstd_compress(napi_env env, napi_callback_info info) {
  zstd_context *context;
  uint8_t *src, *dst;
  size_t src_length, dst_length;
  if (!context_args(env, info, &context, &src, &src_length, &dst, &dst_length))
    return fail(env, "zstdCompress(context, src: Uint8Array, dst: Uint8Array)");
  size_t length = api.compress_cctx(context->cctx, dst, dst_length, src, src_length, context->level);
  return int_result(env, api.is_error(length) ? 0 : (int64_t)length);
}

/* zstdDecompress(context, src, dst): the length decoded into dst, or -1 when src is not zstd frames
 * whose content fits dst. */
static napi_value zstd_decompress(napi_env env, napi_callback_info info) {
  zstd_context *context;
  uint8_t *src, *dst;
  size_t src_length, dst_length;
  if (!context_args(env, info, &context, &src, &src_length, &dst, &dst_length))
    return fail(env, "zstdDecompress(context, src: Uint8Array, dst: Uint8Array)");
  size_t length = api.decompress_dctx(context->dctx, dst, dst_length, src, src_length);
  return int_result(env, api.is_error(length) ? -1 : (int64_t)length);
}

napi_value zstd_batch_exports(napi_env env, napi_value exports) {
  napi_property_descriptor properties[] = {
      {"zstdContext", NULL, zstd_context_new, NULL, NULL, NULL, napi_default, NULL},
      {"zstdCompress", NULL, zstd_compress, NULL, NULL, NULL, napi_default, NULL},
      {"zstdDecompress", NULL, zstd_decompress, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof(properties) / sizeof(properties[0]), properties);
  return exports;
}
