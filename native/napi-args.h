/*
 * Argument helpers the addon's sources share: a Uint8Array's bytes, a whole number (in and out), and a
 * TypeError thrown with a message (the JavaScript side checks types; these only refuse what would be unsafe).
 */
#ifndef VMSCATTER_NAPI_ARGS_H
#define VMSCATTER_NAPI_ARGS_H

#include <node_api.h>
#include <stdint.h>

static inline napi_value fail(napi_env env, const char *message) {
  napi_throw_type_error(env, NULL, message);
  return NULL;
}

static inline int bytes_of(napi_env env, napi_value value, uint8_t **data, size_t *length) {
  napi_typedarray_type type;
  napi_value buffer;
  size_t offset;
  void *raw;
  if (napi_get_typedarray_info(env, value, &type, length, &raw, &buffer, &offset) != napi_ok) return 0;
  if (type != napi_uint8_array) return 0;
  *data = raw;
  return 1;
}

static inline int int_of(napi_env env, napi_value value, int64_t *out) {
  return napi_get_value_int64(env, value, out) == napi_ok;
}

/* A whole number as a JavaScript number. */
static inline napi_value int_result(napi_env env, int64_t value) {
  napi_value result;
  napi_create_int64(env, value, &result);
  return result;
}

#endif
