/*
 * The transport's per-packet work at native speed (src/transport/packet-crypto.ts, dgram-socket.ts).
 *
 * AES-256-GCM with one EVP context per key and direction, made once per session: per packet only the
 * nonce is set (the key schedule and GHASH tables stay), the associated data and body go through in
 * place or from a separate source straight into the datagram, and the tag is written after the body.
 * Node's crypto API makes a Cipheriv per nonce, and a Buffer per update, tag and final. The wire format
 * and the checks are those of packet-crypto.ts: nonce = header bytes 8..20, AAD = the 20-byte header,
 * 16-byte tag; opening verifies the tag (OpenSSL compares in constant time) and wipes what it wrote when
 * the tag is wrong. OpenSSL is the one inside Node (its symbols are exported by the node binary).
 *
 * Socket buffers: SO_RCVBUFFORCE / SO_SNDBUFFORCE, which a process with CAP_NET_ADMIN may use to go
 * past net.core.rmem_max / wmem_max (a bursty multicast receiver is the case they exist for).
 *
 * Receiving: node:dgram reads one datagram per system call and allocates a buffer (64 KiB, then
 * shrunk) and an address object for each. udpReceiveStart watches a duplicate of the socket's
 * descriptor on libuv's loop and reads up to `slots` datagrams per recvmmsg call into fixed slots of
 * one buffer the caller owns, then calls back once per batch with their count; lengths and sources go
 * into a Uint32Array beside it ([length, IPv4 address, port] per slot). The caller stops node:dgram's
 * own reading first. A datagram larger than its slot is counted in the slot's length as 0 (dropped).
 * Coalescing: datagrams paced at a link's rate arrive one at a time, and waking the loop (and calling
 * into JavaScript) per datagram costs more than reading it. So once a readiness event found datagrams,
 * the reader stops watching and reads again `coalesceMs` later (a timer), and keeps doing so while it
 * finds some; the first read that finds none goes back to watching. Datagrams wait at most about that
 * long in the socket's buffer (which is sized for far longer).
 *
 * Erasure code: gfCombine is the region kernel of src/transport/gf256.ts (outputs[r] = sum over j of
 * coefficients[r][j] * inputs[j] over GF(2^8), polynomial 0x11d) on the inputs where they are: each byte
 * split in two nibbles looked up in 16-entry product tables, 32 bytes per AVX2 shuffle where the CPU
 * has AVX2, a byte per table lookup elsewhere. The WebAssembly kernel copies every input into its own
 * memory first.
 */
/* _GNU_SOURCE (recvmmsg, process_vm_readv) comes from binding.gyp, for every source alike. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <node_api.h>
#include "napi-args.h"
#include <openssl/evp.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define KEY_BYTES 32
#define NONCE_BYTES 12
#define TAG_BYTES 16

typedef struct {
  EVP_CIPHER_CTX *seal;
  EVP_CIPHER_CTX *open;
} aead_t;

static void free_aead(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  aead_t *aead = data;
  EVP_CIPHER_CTX_free(aead->seal);
  EVP_CIPHER_CTX_free(aead->open);
  free(aead);
}

/* aeadKey(key: Uint8Array(32)): an opaque pair of contexts (seal, open) keyed once. */
static napi_value aead_key(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  uint8_t *key;
  size_t length;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1 || !bytes_of(env, argv[0], &key, &length) || length != KEY_BYTES)
    return fail(env, "aeadKey: a 32-byte Uint8Array key is required");
  aead_t *aead = calloc(1, sizeof(aead_t));
  if (aead == NULL) return fail(env, "aeadKey: out of memory");
  aead->seal = EVP_CIPHER_CTX_new();
  aead->open = EVP_CIPHER_CTX_new();
  if (aead->seal == NULL || aead->open == NULL ||
      EVP_EncryptInit_ex(aead->seal, EVP_aes_256_gcm(), NULL, key, NULL) != 1 ||
      EVP_DecryptInit_ex(aead->open, EVP_aes_256_gcm(), NULL, key, NULL) != 1) {
    free_aead(env, aead, NULL);
    return fail(env, "aeadKey: OpenSSL refused AES-256-GCM");
  }
  napi_value external;
  if (napi_create_external(env, aead, free_aead, NULL, &external) != napi_ok) {
    free_aead(env, aead, NULL);
    return fail(env, "aeadKey: cannot wrap the context");
  }
  return external;
}

/*
 * aeadSeal(key, datagram, plainLength, source, sourceOffset, sourceLength): number
 *
 * datagram[0..20) is the header (AAD; nonce = bytes 8..20). Encrypts datagram[20..20+plainLength) in
 * place, then source[sourceOffset..+sourceLength) into the datagram right after it (source may be
 * null when sourceLength is 0), and writes the tag after that. Returns the datagram's length.
 */
static napi_value aead_seal(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  void *state;
  uint8_t *datagram, *source = NULL;
  size_t datagram_length, source_length = 0;
  int64_t plain, offset, count;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 6 || napi_get_value_external(env, argv[0], &state) != napi_ok ||
      !bytes_of(env, argv[1], &datagram, &datagram_length) || !int_of(env, argv[2], &plain) ||
      !int_of(env, argv[4], &offset) || !int_of(env, argv[5], &count))
    return fail(env, "aeadSeal(key, datagram, plainLength, source, sourceOffset, sourceLength)");
  if (count > 0 && !bytes_of(env, argv[3], &source, &source_length))
    return fail(env, "aeadSeal: source must be a Uint8Array");
  const int64_t header = 20;
  if (plain < 0 || offset < 0 || count < 0 || (count > 0 && (uint64_t)offset + (uint64_t)count > source_length) ||
      (uint64_t)header + (uint64_t)plain + (uint64_t)count + TAG_BYTES > datagram_length ||
      plain + count > 0x7fffffff)
    return fail(env, "aeadSeal: a range is outside its array");
  EVP_CIPHER_CTX *ctx = ((aead_t *)state)->seal;
  uint8_t *body = datagram + header;
  int out = 0;
  if (EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, datagram + 8) != 1 ||
      EVP_EncryptUpdate(ctx, NULL, &out, datagram, (int)header) != 1 ||
      (plain > 0 && EVP_EncryptUpdate(ctx, body, &out, body, (int)plain) != 1) ||
      (count > 0 && EVP_EncryptUpdate(ctx, body + plain, &out, source + offset, (int)count) != 1) ||
      EVP_EncryptFinal_ex(ctx, body + plain + count, &out) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_BYTES, body + plain + count) != 1)
    return fail(env, "aeadSeal: OpenSSL failed");
  napi_value result;
  napi_create_int64(env, header + plain + count + TAG_BYTES, &result);
  return result;
}

/*
 * aeadOpen(key, datagram, datagramLength, out, outOffset): boolean
 *
 * datagram[0..datagramLength) = header (20) || ciphertext || tag (16). Decrypts the ciphertext into
 * out[outOffset..] (which may be the datagram's own body, in place) and returns whether the tag is
 * right; when it is not, what was written is zeroed.
 */
static napi_value aead_open(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  void *state;
  uint8_t *datagram, *target;
  size_t datagram_length, target_length;
  int64_t length, offset;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 5 || napi_get_value_external(env, argv[0], &state) != napi_ok ||
      !bytes_of(env, argv[1], &datagram, &datagram_length) || !int_of(env, argv[2], &length) ||
      !bytes_of(env, argv[3], &target, &target_length) || !int_of(env, argv[4], &offset))
    return fail(env, "aeadOpen(key, datagram, datagramLength, out, outOffset)");
  const int64_t header = 20;
  int64_t cipher = length - header - TAG_BYTES;
  if (cipher < 0 || (uint64_t)length > datagram_length || offset < 0 ||
      (uint64_t)offset + (uint64_t)cipher > target_length || cipher > 0x7fffffff)
    return fail(env, "aeadOpen: a range is outside its array");
  EVP_CIPHER_CTX *ctx = ((aead_t *)state)->open;
  uint8_t tag[TAG_BYTES];
  memcpy(tag, datagram + header + cipher, TAG_BYTES);
  int out = 0;
  int ok = EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, datagram + 8) == 1 &&
           EVP_DecryptUpdate(ctx, NULL, &out, datagram, (int)header) == 1 &&
           (cipher == 0 || EVP_DecryptUpdate(ctx, target + offset, &out, datagram + header, (int)cipher) == 1) &&
           EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_BYTES, tag) == 1 &&
           EVP_DecryptFinal_ex(ctx, target + offset + cipher, &out) == 1;
  if (!ok && cipher > 0) memset(target + offset, 0, (size_t)cipher);
  napi_value result;
  napi_get_boolean(env, ok, &result);
  return result;
}

/*
 * forceSocketBuffer(fd, which: 0 receive | 1 send, bytes): 0, or the errno (EPERM without
 * CAP_NET_ADMIN). The kernel doubles the figure for its bookkeeping, as with SO_RCVBUF.
 */
static napi_value force_socket_buffer(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  int64_t fd, which, bytes;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 3 || !int_of(env, argv[0], &fd) || !int_of(env, argv[1], &which) || !int_of(env, argv[2], &bytes) ||
      fd < 0 || (which != 0 && which != 1) || bytes < 0 || bytes > 0x7fffffff)
    return fail(env, "forceSocketBuffer(fd, 0 | 1, bytes)");
  int value = (int)bytes;
  int rc = setsockopt((int)fd, SOL_SOCKET, which == 0 ? SO_RCVBUFFORCE : SO_SNDBUFFORCE, &value, sizeof(value));
  napi_value result;
  napi_create_int32(env, rc == 0 ? 0 : errno, &result);
  return result;
}

/* The one argument of a call taking a descriptor: 1 with *fd set, or 0 with a TypeError thrown. */
static int descriptor_argument(napi_env env, napi_callback_info info, const char *usage, int *fd) {
  size_t argc = 1;
  napi_value argv[1];
  int64_t value;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1 || !int_of(env, argv[0], &value) || value < 0 || value > 0x7fffffff) {
    fail(env, usage);
    return 0;
  }
  *fd = (int)value;
  return 1;
}

/*
 * onlyJoinedGroups(fd): the socket receives multicast only for groups it joined itself
 * (IP_MULTICAST_ALL off). Linux otherwise hands a socket bound to the wildcard address the datagrams
 * of every group any socket of the host joined on its port. 0, or the errno.
 */
static napi_value only_joined_groups(napi_env env, napi_callback_info info) {
  int fd;
  if (!descriptor_argument(env, info, "onlyJoinedGroups(fd)", &fd)) return NULL;
  int off = 0;
  int rc = setsockopt(fd, IPPROTO_IP, IP_MULTICAST_ALL, &off, sizeof(off));
  return int_result(env, rc == 0 ? 0 : errno);
}

/*
 * socketUnread(fd): bytes written to a connected stream socket that its peer has not read yet
 * (SIOCOUTQ; on a unix socket they leave the count once the peer's read consumed them), or -errno.
 */
static napi_value socket_unread(napi_env env, napi_callback_info info) {
  int fd;
  if (!descriptor_argument(env, info, "socketUnread(fd)", &fd)) return NULL;
  int pending = 0;
  int rc = ioctl(fd, SIOCOUTQ, &pending);
  return int_result(env, rc == 0 ? pending : -errno);
}

/*
 * duplicateDescriptor(fd): a duplicate of fd (close-on-exec), or -errno: a socket accepted by node:net
 * is read again through a net.Socket of its own, with a reused read buffer (src/live/stream-socket.ts).
 */
static napi_value duplicate_descriptor(napi_env env, napi_callback_info info) {
  int fd;
  if (!descriptor_argument(env, info, "duplicateDescriptor(fd)", &fd)) return NULL;
  int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  return int_result(env, copy >= 0 ? copy : -errno);
}

#define MAX_SLOTS 256
/* Batches read per readiness event before yielding to the loop (others' timers and I/O). */
#define MAX_ROUNDS 8

typedef struct {
  uv_poll_t poll;
  uv_timer_t timer;
  int open_handles;
  int64_t coalesce_ms;
  napi_env env;
  napi_ref callback;
  napi_ref buffer_ref;
  napi_ref meta_ref;
  napi_ref closed_callback;
  napi_async_context context;
  uint8_t *buffer;
  uint32_t *meta;
  size_t slot_bytes;
  int slots;
  int fd;
  int stopped;
  struct mmsghdr msgs[MAX_SLOTS];
  struct iovec iovs[MAX_SLOTS];
  struct sockaddr_in addrs[MAX_SLOTS];
} receiver_t;

static void receiver_closed(uv_handle_t *handle) {
  receiver_t *r = handle->data;
  if (--r->open_handles > 0) return;
  close(r->fd);
  if (r->closed_callback != NULL) {
    napi_handle_scope scope;
    if (napi_open_handle_scope(r->env, &scope) == napi_ok) {
      napi_value callback, global, result;
      napi_get_reference_value(r->env, r->closed_callback, &callback);
      napi_get_global(r->env, &global);
      if (napi_make_callback(r->env, r->context, global, callback, 0, NULL, &result) != napi_ok) {
        napi_value error;
        if (napi_get_and_clear_last_exception(r->env, &error) == napi_ok) napi_fatal_exception(r->env, error);
      }
      napi_close_handle_scope(r->env, scope);
    }
    napi_delete_reference(r->env, r->closed_callback);
  }
  napi_delete_reference(r->env, r->callback);
  napi_delete_reference(r->env, r->buffer_ref);
  napi_delete_reference(r->env, r->meta_ref);
  napi_async_destroy(r->env, r->context);
  free(r);
}

/* Reads what is there (up to MAX_ROUNDS batches), calling back per batch; returns how many were read. */
static int drain(receiver_t *r) {
  napi_env env = r->env;
  napi_handle_scope scope;
  int total = 0;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return 0;
  for (int round = 0; round < MAX_ROUNDS && !r->stopped; round++) {
    for (int i = 0; i < r->slots; i++) {
      r->msgs[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_in);
      r->msgs[i].msg_hdr.msg_flags = 0;
    }
    int n = recvmmsg(r->fd, r->msgs, (unsigned)r->slots, MSG_DONTWAIT, NULL);
    if (n <= 0) break;
    total += n;
    for (int i = 0; i < n; i++) {
      int truncated = (r->msgs[i].msg_hdr.msg_flags & MSG_TRUNC) != 0;
      r->meta[3 * i] = truncated ? 0 : r->msgs[i].msg_len;
      r->meta[3 * i + 1] = ntohl(r->addrs[i].sin_addr.s_addr);
      r->meta[3 * i + 2] = ntohs(r->addrs[i].sin_port);
    }
    napi_value callback, global, count, result;
    napi_get_reference_value(env, r->callback, &callback);
    napi_get_global(env, &global);
    napi_create_int32(env, n, &count);
    if (napi_make_callback(env, r->context, global, callback, 1, &count, &result) != napi_ok) {
      napi_value error;
      if (napi_get_and_clear_last_exception(env, &error) == napi_ok) napi_fatal_exception(env, error);
      break;
    }
    if (n < r->slots) break;
  }
  napi_close_handle_scope(env, scope);
  return total;
}

static void on_readable(uv_poll_t *poll, int status, int events);

static void on_timer(uv_timer_t *timer) {
  receiver_t *r = timer->data;
  if (r->stopped) return;
  int total = drain(r);
  if (r->stopped) return;
  if (total > 0)
    uv_timer_start(&r->timer, on_timer, (uint64_t)r->coalesce_ms, 0);
  else
    uv_poll_start(&r->poll, UV_READABLE, on_readable);
}

static void on_readable(uv_poll_t *poll, int status, int events) {
  (void)events;
  receiver_t *r = poll->data;
  if (r->stopped || status < 0) return;
  int total = drain(r);
  if (r->stopped || total == 0 || r->coalesce_ms <= 0) return;
  uv_poll_stop(&r->poll);
  uv_timer_start(&r->timer, on_timer, (uint64_t)r->coalesce_ms, 0);
}

/*
 * udpReceiveStart(fd, buffer: Uint8Array, slotBytes, meta: Uint32Array, callback(count), coalesceMs?):
 * handle. buffer holds the slots (slots = min(buffer.length / slotBytes, meta.length / 3, 256));
 * coalesceMs 0 reads on every readiness event.
 */
static napi_value udp_receive_start(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  int64_t fd, slot_bytes, coalesce_ms = 0;
  uint8_t *buffer;
  size_t buffer_length, meta_length;
  void *meta_raw;
  napi_typedarray_type type;
  napi_value ab;
  size_t ab_offset;
  napi_valuetype callback_type;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 5 || !int_of(env, argv[0], &fd) || !bytes_of(env, argv[1], &buffer, &buffer_length) ||
      !int_of(env, argv[2], &slot_bytes) ||
      napi_get_typedarray_info(env, argv[3], &type, &meta_length, &meta_raw, &ab, &ab_offset) != napi_ok ||
      type != napi_uint32_array || napi_typeof(env, argv[4], &callback_type) != napi_ok ||
      callback_type != napi_function || fd < 0 || slot_bytes <= 0)
    return fail(env, "udpReceiveStart(fd, buffer, slotBytes, meta: Uint32Array, callback, coalesceMs?)");
  if (argc >= 6 && (!int_of(env, argv[5], &coalesce_ms) || coalesce_ms < 0 || coalesce_ms > 1000))
    return fail(env, "udpReceiveStart: coalesceMs must be 0..1000");
  int64_t slots = (int64_t)buffer_length / slot_bytes;
  if ((int64_t)meta_length / 3 < slots) slots = (int64_t)meta_length / 3;
  if (slots > MAX_SLOTS) slots = MAX_SLOTS;
  if (slots < 1) return fail(env, "udpReceiveStart: no room for one slot");
  uv_loop_t *loop;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) return fail(env, "udpReceiveStart: no event loop");
  receiver_t *r = calloc(1, sizeof(receiver_t));
  if (r == NULL) return fail(env, "udpReceiveStart: out of memory");
  r->fd = fcntl((int)fd, F_DUPFD_CLOEXEC, 0);
  if (r->fd < 0) {
    free(r);
    return fail(env, "udpReceiveStart: cannot duplicate the descriptor");
  }
  r->env = env;
  r->coalesce_ms = coalesce_ms;
  r->buffer = buffer;
  r->meta = meta_raw;
  r->slot_bytes = (size_t)slot_bytes;
  r->slots = (int)slots;
  for (int i = 0; i < r->slots; i++) {
    r->iovs[i].iov_base = buffer + (size_t)i * r->slot_bytes;
    r->iovs[i].iov_len = r->slot_bytes;
    r->msgs[i].msg_hdr.msg_iov = &r->iovs[i];
    r->msgs[i].msg_hdr.msg_iovlen = 1;
    r->msgs[i].msg_hdr.msg_name = &r->addrs[i];
    r->msgs[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_in);
  }
  napi_value name;
  napi_create_string_utf8(env, "vmscatter:udpReceive", NAPI_AUTO_LENGTH, &name);
  if (napi_create_reference(env, argv[4], 1, &r->callback) != napi_ok ||
      napi_create_reference(env, argv[1], 1, &r->buffer_ref) != napi_ok ||
      napi_create_reference(env, argv[3], 1, &r->meta_ref) != napi_ok ||
      napi_async_init(env, NULL, name, &r->context) != napi_ok || uv_timer_init(loop, &r->timer) != 0 ||
      uv_poll_init(loop, &r->poll, r->fd) != 0) {
    close(r->fd);
    free(r);
    return fail(env, "udpReceiveStart: cannot set up");
  }
  r->poll.data = r;
  r->timer.data = r;
  r->open_handles = 2;
  if (uv_poll_start(&r->poll, UV_READABLE, on_readable) != 0) {
    r->stopped = 1;
    uv_close((uv_handle_t *)&r->poll, receiver_closed);
    uv_close((uv_handle_t *)&r->timer, receiver_closed);
    return fail(env, "udpReceiveStart: cannot watch the descriptor");
  }
  napi_value external;
  napi_create_external(env, r, NULL, NULL, &external);
  return external;
}

/*
 * udpReceiveStop(handle, closed?: () => void): stops reading and closes the duplicate descriptor, then
 * calls `closed` (the socket is only gone once both descriptors are); once only.
 */
static napi_value udp_receive_stop(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  void *data;
  napi_valuetype closed_type = napi_undefined;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1 || napi_get_value_external(env, argv[0], &data) != napi_ok ||
      (argc >= 2 && napi_typeof(env, argv[1], &closed_type) != napi_ok))
    return fail(env, "udpReceiveStop(handle, closed?)");
  receiver_t *r = data;
  if (!r->stopped) {
    if (closed_type == napi_function) napi_create_reference(env, argv[1], 1, &r->closed_callback);
    r->stopped = 1;
    uv_poll_stop(&r->poll);
    uv_timer_stop(&r->timer);
    uv_close((uv_handle_t *)&r->poll, receiver_closed);
    uv_close((uv_handle_t *)&r->timer, receiver_closed);
  }
  return NULL;
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/*
 * populate(bytes: Uint8Array): boolean
 *
 * Backs the pages of `bytes` with memory now, in one call (MADV_POPULATE_WRITE, Linux 5.14), instead of
 * one page fault per 4 KiB at first write: a receiver writes every byte of a new object once. False
 * where the kernel cannot (older kernels): the pages then fault in as they are written.
 */
static napi_value populate(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  uint8_t *bytes;
  size_t length;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1 || !bytes_of(env, argv[0], &bytes, &length)) return fail(env, "populate(bytes)");
  long page = sysconf(_SC_PAGESIZE);
  uintptr_t start = ((uintptr_t)bytes + (uintptr_t)page - 1) & ~(uintptr_t)(page - 1);
  uintptr_t end = ((uintptr_t)bytes + length) & ~(uintptr_t)(page - 1);
  int ok = end > start && madvise((void *)start, end - start, MADV_POPULATE_WRITE) == 0;
  napi_value result;
  napi_get_boolean(env, ok, &result);
  return result;
}

/* ---------------------------------------------------------------------------------------------- */
/* GF(2^8) region kernel */

static uint8_t gf_mul[256][256];
/* Per coefficient c: c * x for x = 0..15 (low nibble), then c * (x << 4) (high nibble). */
static uint8_t gf_nibbles[256][32];
static int gf_ready = 0;
static int gf_avx2 = 0;

static void gf_init(void) {
  if (gf_ready) return;
  uint8_t exp[512], log[256];
  int x = 1;
  for (int i = 0; i < 255; i++) {
    exp[i] = (uint8_t)x;
    log[x] = (uint8_t)i;
    x <<= 1;
    if (x & 0x100) x ^= 0x11d;
  }
  for (int i = 255; i < 512; i++) exp[i] = exp[i - 255];
  for (int a = 0; a < 256; a++)
    for (int b = 0; b < 256; b++) gf_mul[a][b] = (a == 0 || b == 0) ? 0 : exp[log[a] + log[b]];
  for (int c = 0; c < 256; c++)
    for (int n = 0; n < 16; n++) {
      gf_nibbles[c][n] = gf_mul[c][n];
      gf_nibbles[c][16 + n] = gf_mul[c][n << 4];
    }
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  gf_avx2 = __builtin_cpu_supports("avx2");
#endif
  gf_ready = 1;
}

/* out[0..length) ^= c * in[0..length) (or = when first), byte by byte. */
static void gf_mul_add_scalar(uint8_t *out, const uint8_t *in, uint8_t c, size_t length, int first) {
  const uint8_t *row = gf_mul[c];
  if (first)
    for (size_t i = 0; i < length; i++) out[i] = row[in[i]];
  else
    for (size_t i = 0; i < length; i++) out[i] ^= row[in[i]];
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2"))) static void gf_mul_add_avx2(uint8_t *out, const uint8_t *in, uint8_t c,
                                                             size_t length, int first) {
  const __m128i lo128 = _mm_loadu_si128((const __m128i *)gf_nibbles[c]);
  const __m128i hi128 = _mm_loadu_si128((const __m128i *)(gf_nibbles[c] + 16));
  const __m256i lo = _mm256_broadcastsi128_si256(lo128);
  const __m256i hi = _mm256_broadcastsi128_si256(hi128);
  const __m256i mask = _mm256_set1_epi8(0x0f);
  size_t i = 0;
  for (; i + 32 <= length; i += 32) {
    __m256i v = _mm256_loadu_si256((const __m256i *)(in + i));
    __m256i p = _mm256_xor_si256(_mm256_shuffle_epi8(lo, _mm256_and_si256(v, mask)),
                                 _mm256_shuffle_epi8(hi, _mm256_and_si256(_mm256_srli_epi16(v, 4), mask)));
    if (!first) p = _mm256_xor_si256(p, _mm256_loadu_si256((const __m256i *)(out + i)));
    _mm256_storeu_si256((__m256i *)(out + i), p);
  }
  gf_mul_add_scalar(out + i, in + i, c, length - i, first);
}
#endif

static void gf_mul_add(uint8_t *out, const uint8_t *in, uint8_t c, size_t length, int first) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (gf_avx2) {
    gf_mul_add_avx2(out, in, c, length, first);
    return;
  }
#endif
  gf_mul_add_scalar(out, in, c, length, first);
}

#define MAX_REGIONS 256

/*
 * gfCombine(coefficients: Uint8Array, inputs: Uint8Array[], outputs: Uint8Array[], length): undefined
 * outputs[r][0..length) = sum over j of coefficients[r * inputs.length + j] * inputs[j][0..length).
 * The caller checks that outputs overlap neither the inputs nor each other (gf256.ts does).
 */
static napi_value gf_combine(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  uint8_t *coefficients;
  size_t coefficient_count;
  uint32_t n, m;
  int64_t length;
  bool is_array;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 4 || !bytes_of(env, argv[0], &coefficients, &coefficient_count) ||
      napi_is_array(env, argv[1], &is_array) != napi_ok || !is_array || napi_get_array_length(env, argv[1], &n) != napi_ok ||
      napi_is_array(env, argv[2], &is_array) != napi_ok || !is_array || napi_get_array_length(env, argv[2], &m) != napi_ok ||
      !int_of(env, argv[3], &length) || length < 0)
    return fail(env, "gfCombine(coefficients, inputs[], outputs[], length)");
  if (n > MAX_REGIONS || m > MAX_REGIONS || (size_t)n * m != coefficient_count)
    return fail(env, "gfCombine: coefficients must be outputs x inputs (at most 256 each)");
  gf_init();
  uint8_t *inputs[MAX_REGIONS];
  for (uint32_t j = 0; j < n; j++) {
    napi_value element;
    size_t region;
    if (napi_get_element(env, argv[1], j, &element) != napi_ok || !bytes_of(env, element, &inputs[j], &region) ||
        region < (size_t)length)
      return fail(env, "gfCombine: every input must be a Uint8Array of at least `length` bytes");
  }
  for (uint32_t r = 0; r < m; r++) {
    napi_value element;
    uint8_t *out;
    size_t region;
    if (napi_get_element(env, argv[2], r, &element) != napi_ok || !bytes_of(env, element, &out, &region) ||
        region < (size_t)length)
      return fail(env, "gfCombine: every output must be a Uint8Array of at least `length` bytes");
    int first = 1;
    for (uint32_t j = 0; j < n; j++) {
      uint8_t c = coefficients[(size_t)r * n + j];
      if (c == 0) continue;
      gf_mul_add(out, inputs[j], c, (size_t)length, first);
      first = 0;
    }
    if (first) memset(out, 0, (size_t)length);
  }
  return NULL;
}

napi_value transport_exports(napi_env env, napi_value exports) {
  napi_property_descriptor properties[] = {
      {"aeadKey", NULL, aead_key, NULL, NULL, NULL, napi_default, NULL},
      {"aeadSeal", NULL, aead_seal, NULL, NULL, NULL, napi_default, NULL},
      {"aeadOpen", NULL, aead_open, NULL, NULL, NULL, napi_default, NULL},
      {"forceSocketBuffer", NULL, force_socket_buffer, NULL, NULL, NULL, napi_default, NULL},
      {"socketUnread", NULL, socket_unread, NULL, NULL, NULL, napi_default, NULL},
      {"duplicateDescriptor", NULL, duplicate_descriptor, NULL, NULL, NULL, napi_default, NULL},
      {"onlyJoinedGroups", NULL, only_joined_groups, NULL, NULL, NULL, napi_default, NULL},
      {"udpReceiveStart", NULL, udp_receive_start, NULL, NULL, NULL, napi_default, NULL},
      {"udpReceiveStop", NULL, udp_receive_stop, NULL, NULL, NULL, napi_default, NULL},
      {"populate", NULL, populate, NULL, NULL, NULL, napi_default, NULL},
      {"gfCombine", NULL, gf_combine, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof(properties) / sizeof(properties[0]), properties);
  return exports;
}
