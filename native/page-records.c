/*
 * A batch of page records in one call: per page [digest (16) | encoding (1) | length (u16 LE) |
 * payload], the page uniform (one 8-byte word repeated: the word), LZ4-compressed (a block with its
 * decoded size, u32 LE, in front) when that saves at least 1/8 of it, or raw. The same records as
 * encodeRecords in src/memory/page-batches.ts, which calls this where the addon is built.
 *
 * Why here: through the npm LZ4 binding a page costs a call into the addon and a fresh output
 * buffer (the kernel faults it in), about 14 us per compressible page on these machines, where the
 * compression itself is a few. This writes every record of the batch into one buffer.
 *
 * The LZ4 block compressor is a plain greedy one (a 4096-entry hash of 4-byte sequences, LZ4's
 * skipping over incompressible stretches, the format's end rules: the last 5 bytes are literals, no match starts within 12 bytes of the end). Its blocks
 * are standard LZ4 blocks: the targets decode them with the same decoder as always, which checks
 * every length against the page (decoding stays in the binding, where a forged block is refused).
 */
#include <node_api.h>
#include "napi-args.h"
#include <stdint.h>
#include <string.h>

#define PAGE_BYTES 4096
#define DIGEST_LEN 16
#define RECORD_HEAD 19
#define UNIFORM_WORD 8
/* A compressed page must save 1/8 of the page, prefix included (page-codec.ts MAX_COMPRESSED_BYTES). */
#define MAX_COMPRESSED (PAGE_BYTES - PAGE_BYTES / 8)
#define SIZE_PREFIX 4
#define HASH_LOG 12
#define MIN_MATCH 4
#define LAST_LITERALS 5
#define MF_LIMIT 12
#define SKIP_STRENGTH 6

enum { ENCODING_RAW = 0, ENCODING_UNIFORM = 1, ENCODING_LZ4 = 2 };

static inline uint32_t read32(const uint8_t *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

static inline uint32_t hash4(uint32_t sequence) { return (sequence * 2654435761u) >> (32 - HASH_LOG); }

/* Writes a length's continuation bytes (after the 15 in its token nibble); NULL past `end`. */
static inline uint8_t *put_length(uint8_t *op, const uint8_t *end, size_t rest) {
  while (rest >= 255) {
    if (op >= end) return NULL;
    *op++ = 255;
    rest -= 255;
  }
  if (op >= end) return NULL;
  *op++ = (uint8_t)rest;
  return op;
}

/* Literals [from, from + count) with the token's high nibble; NULL when they do not fit before `end`. */
static inline uint8_t *put_literals(uint8_t *op, const uint8_t *end, uint8_t **token, const uint8_t *from,
                                    size_t count) {
  if (op >= end) return NULL;
  *token = op++;
  if (count >= 15) {
    **token = 15 << 4;
    op = put_length(op, end, count - 15);
    if (op == NULL) return NULL;
  } else {
    **token = (uint8_t)(count << 4);
  }
  if ((size_t)(end - op) < count) return NULL;
  memcpy(op, from, count);
  return op + count;
}

/* An LZ4 block of src[0..n) into dst (at most cap bytes); its length, or 0 when it does not fit. */
static size_t lz4_block(const uint8_t *src, size_t n, uint8_t *dst, size_t cap) {
  uint16_t table[1 << HASH_LOG];
  const uint8_t *end = dst + cap;
  uint8_t *op = dst;
  uint8_t *token;
  size_t anchor = 0;
  if (n >= MF_LIMIT + 1) {
    memset(table, 0, sizeof(table));
    const size_t match_start_limit = n - MF_LIMIT; /* a match starts before this */
    const size_t match_end_limit = n - LAST_LITERALS; /* and ends at most here */
    size_t ip = 1;
    /* As LZ4 does: after every 64 misses in a row the search steps one byte further, so an
     * incompressible page is given up on quickly. */
    size_t misses = 1 << SKIP_STRENGTH;
    while (ip < match_start_limit) {
      const uint32_t sequence = read32(src + ip);
      const uint32_t h = hash4(sequence);
      size_t ref = table[h];
      table[h] = (uint16_t)ip;
      if (read32(src + ref) != sequence) {
        ip += misses++ >> SKIP_STRENGTH;
        continue;
      }
      misses = 1 << SKIP_STRENGTH;
      while (ip > anchor && ref > 0 && src[ip - 1] == src[ref - 1]) {
        ip--;
        ref--;
      }
      size_t length = MIN_MATCH;
      while (ip + length < match_end_limit && src[ip + length] == src[ref + length]) length++;
      op = put_literals(op, end, &token, src + anchor, ip - anchor);
      if (op == NULL || end - op < 2) return 0;
      const size_t offset = ip - ref;
      *op++ = (uint8_t)(offset & 0xff);
      *op++ = (uint8_t)(offset >> 8);
      const size_t extra = length - MIN_MATCH;
      if (extra >= 15) {
        *token |= 15;
        op = put_length(op, end, extra - 15);
        if (op == NULL) return 0;
      } else {
        *token |= (uint8_t)extra;
      }
      ip += length;
      anchor = ip;
      if (ip < match_start_limit) table[hash4(read32(src + ip - 2))] = (uint16_t)(ip - 2);
    }
  }
  op = put_literals(op, end, &token, src + anchor, n - anchor);
  return op == NULL ? 0 : (size_t)(op - dst);
}

/*
 * A page's LZ4 payload (the 4-byte little-endian decoded size, then the block) written at `payload`
 * (MAX_COMPRESSED bytes of room): its length when it saves at least an eighth of the page, else 0.
 */
static size_t lz4_payload(const uint8_t *page, uint8_t *payload) {
  const size_t block = lz4_block(page, PAGE_BYTES, payload + SIZE_PREFIX, MAX_COMPRESSED - SIZE_PREFIX);
  if (block == 0) return 0;
  payload[0] = PAGE_BYTES & 0xff;
  payload[1] = (PAGE_BYTES >> 8) & 0xff;
  payload[2] = 0;
  payload[3] = 0;
  return SIZE_PREFIX + block;
}

/*
 * encodePageRecords(digests, pages, compress, out, counts): the batch's records written into `out`
 * (room for at least 4115 bytes per page); its length. counts (Int32Array of 3) gets the pages sent
 * raw, uniform and compressed added to it.
 */
static napi_value encode_page_records(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  uint8_t *digests, *pages, *out;
  size_t digests_length, pages_length, out_length;
  bool compress = false;
  napi_typedarray_type counts_type;
  size_t counts_length;
  void *counts_raw;
  napi_value counts_buffer;
  size_t counts_offset;
  if (argc < 5 || !bytes_of(env, argv[0], &digests, &digests_length) ||
      !bytes_of(env, argv[1], &pages, &pages_length) || napi_get_value_bool(env, argv[2], &compress) != napi_ok ||
      !bytes_of(env, argv[3], &out, &out_length) ||
      napi_get_typedarray_info(env, argv[4], &counts_type, &counts_length, &counts_raw, &counts_buffer,
                               &counts_offset) != napi_ok ||
      counts_type != napi_int32_array || counts_length < 3)
    return fail(env, "encodePageRecords(digests, pages, compress, out, counts: Int32Array(3))");
  const size_t count = pages_length / PAGE_BYTES;
  if (pages_length % PAGE_BYTES != 0 || digests_length != count * DIGEST_LEN ||
      out_length < count * (RECORD_HEAD + PAGE_BYTES))
    return fail(env, "encodePageRecords: 16 digest bytes and 4096 page bytes per page, out 4115 per page");
  int32_t *counts = counts_raw;
  uint8_t *op = out;
  for (size_t i = 0; i < count; i++) {
    const uint8_t *page = pages + i * PAGE_BYTES;
    memcpy(op, digests + i * DIGEST_LEN, DIGEST_LEN);
    uint8_t *payload = op + RECORD_HEAD;
    size_t length;
    uint8_t encoding;
    if (memcmp(page, page + UNIFORM_WORD, PAGE_BYTES - UNIFORM_WORD) == 0) {
      encoding = ENCODING_UNIFORM;
      length = UNIFORM_WORD;
      memcpy(payload, page, UNIFORM_WORD);
      counts[1]++;
    } else {
      length = compress ? lz4_payload(page, payload) : 0;
      if (length > 0) {
        encoding = ENCODING_LZ4;
        counts[2]++;
      } else {
        encoding = ENCODING_RAW;
        length = PAGE_BYTES;
        memcpy(payload, page, PAGE_BYTES);
        counts[0]++;
      }
    }
    op[DIGEST_LEN] = encoding;
    op[DIGEST_LEN + 1] = (uint8_t)(length & 0xff);
    op[DIGEST_LEN + 2] = (uint8_t)(length >> 8);
    op = payload + length;
  }
  napi_value result;
  napi_create_int64(env, (int64_t)(op - out), &result);
  return result;
}

/*
 * A token nibble's length with its continuation bytes (read only when the nibble is 15), as
 * put_length writes them: where the input goes on, or NULL when it ends within them.
 */
static inline const uint8_t *get_length(const uint8_t *ip, const uint8_t *iend, size_t *length) {
  if (*length != 15) return ip;
  unsigned more;
  do {
    if (ip >= iend) return NULL;
    more = *ip++;
    *length += more;
  } while (more == 255);
  return ip;
}

/*
 * One page from an LZ4 block (no size prefix) into dst: 1 when the block decodes to exactly a page,
 * 0 for anything else. The block comes off the network: every length is checked against what is
 * left of the input and of the page, and a match may only reach back into what was written.
 */
static int lz4_page(const uint8_t *ip, const uint8_t *iend, uint8_t *dst) {
  uint8_t *op = dst;
  uint8_t *const oend = dst + PAGE_BYTES;
  for (;;) {
    if (ip >= iend) return 0;
    const unsigned token = *ip++;
    size_t literals = token >> 4;
    if ((ip = get_length(ip, iend, &literals)) == NULL) return 0;
    if ((size_t)(iend - ip) < literals || (size_t)(oend - op) < literals) return 0;
    memcpy(op, ip, literals);
    op += literals;
    ip += literals;
    if (ip == iend) return op == oend; /* the last sequence has literals only */
    if (iend - ip < 2) return 0;
    const size_t offset = (size_t)ip[0] | ((size_t)ip[1] << 8);
    ip += 2;
    if (offset == 0 || offset > (size_t)(op - dst)) return 0;
    size_t length = token & 15;
    if ((ip = get_length(ip, iend, &length)) == NULL) return 0;
    length += MIN_MATCH;
    if ((size_t)(oend - op) < length) return 0;
    const uint8_t *match = op - offset;
    if (offset >= length) {
      memcpy(op, match, length);
    } else {
      for (size_t i = 0; i < length; i++) op[i] = match[i]; /* overlapping: a repeat of the last bytes */
    }
    op += length;
  }
}

/*
 * One page from an LZ4 payload (size prefix, then the block) into dst: 1 when the prefix says a page
 * and the block decodes to exactly that, 0 otherwise.
 */
static int lz4_payload_page(const uint8_t *payload, size_t length, uint8_t *dst) {
  return length > SIZE_PREFIX && length <= PAGE_BYTES && payload[0] == (PAGE_BYTES & 0xff) &&
         payload[1] == (PAGE_BYTES >> 8) && payload[2] == 0 && payload[3] == 0 &&
         lz4_page(payload + SIZE_PREFIX, payload + length, dst);
}

/*
 * decodePageRecords(batch, digests, pages, tally): the batch's records decoded, in order, into
 * `digests` (16 bytes each) and `pages` (4096 each), as many as they have room for; a truncated
 * record ends the batch. A record whose payload is not a page (unknown encoding, wrong length, an
 * LZ4 block that does not decode to exactly a page) is skipped. tally (Int32Array of 2) gets
 * [records decoded, records skipped]. Never throws on the batch's content: it comes off the network.
 */
static napi_value decode_page_records(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  uint8_t *batch, *digests, *pages;
  size_t batch_length, digests_length, pages_length;
  napi_typedarray_type tally_type;
  size_t tally_length;
  void *tally_raw;
  napi_value tally_buffer;
  size_t tally_offset;
  if (argc < 4 || !bytes_of(env, argv[0], &batch, &batch_length) ||
      !bytes_of(env, argv[1], &digests, &digests_length) || !bytes_of(env, argv[2], &pages, &pages_length) ||
      napi_get_typedarray_info(env, argv[3], &tally_type, &tally_length, &tally_raw, &tally_buffer,
                               &tally_offset) != napi_ok ||
      tally_type != napi_int32_array || tally_length < 2)
    return fail(env, "decodePageRecords(batch, digests, pages, tally: Int32Array(2))");
  const size_t room = pages_length / PAGE_BYTES < digests_length / DIGEST_LEN ? pages_length / PAGE_BYTES
                                                                                : digests_length / DIGEST_LEN;
  int32_t *tally = tally_raw;
  size_t decoded = 0, skipped = 0, offset = 0;
  while (decoded < room && batch_length - offset >= RECORD_HEAD) {
    const uint8_t *record = batch + offset;
    const size_t length = (size_t)record[DIGEST_LEN + 1] | ((size_t)record[DIGEST_LEN + 2] << 8);
    if (batch_length - offset - RECORD_HEAD < length) break;
    const uint8_t *payload = record + RECORD_HEAD;
    uint8_t *page = pages + decoded * PAGE_BYTES;
    int ok = 0;
    switch (record[DIGEST_LEN]) {
      case ENCODING_RAW:
        ok = length == PAGE_BYTES;
        if (ok) memcpy(page, payload, PAGE_BYTES);
        break;
      case ENCODING_UNIFORM:
        ok = length == UNIFORM_WORD;
        if (ok)
          for (size_t i = 0; i < PAGE_BYTES; i += UNIFORM_WORD) memcpy(page + i, payload, UNIFORM_WORD);
        break;
      case ENCODING_LZ4:
        ok = lz4_payload_page(payload, length, page);
        break;
      default:
        ok = 0;
    }
    if (ok) {
      memcpy(digests + decoded * DIGEST_LEN, record, DIGEST_LEN);
      decoded++;
    } else {
      skipped++;
    }
    offset += RECORD_HEAD + length;
  }
  tally[0] += (int32_t)decoded;
  tally[1] += (int32_t)skipped;
  return NULL;
}

/*
 * The LZ4 payload of one page (size prefix, then the block) written at out[at..]: compressPage(pages,
 * offset, out, at) returns its length when it saves at least an eighth of the page, else 0 (what is
 * at out[at..] is then undefined). out needs MAX_COMPRESSED bytes of room at `at`. The live stream's
 * path: one page at a time, written straight into the message being built.
 */
static napi_value compress_page(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  uint8_t *pages, *out;
  size_t pages_length, out_length;
  int64_t offset, at;
  if (argc < 4 || !bytes_of(env, argv[0], &pages, &pages_length) || !int_of(env, argv[1], &offset) ||
      !bytes_of(env, argv[2], &out, &out_length) || !int_of(env, argv[3], &at))
    return fail(env, "compressPage(pages, offset, out, at)");
  if (offset < 0 || (uint64_t)offset + PAGE_BYTES > pages_length || at < 0 ||
      (uint64_t)at + MAX_COMPRESSED > out_length)
    return fail(env, "compressPage: a whole page at offset, and 3584 bytes of room at `at`");
  napi_value result;
  napi_create_int64(env, (int64_t)lz4_payload(pages + offset, out + at), &result);
  return result;
}

/*
 * decompressPage(payload, out, at): true when `payload` (size prefix, then an LZ4 block) decodes to
 * exactly one page, written at out[at..]. It comes off the network: checked as decodePageRecords does.
 */
static napi_value decompress_page(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  uint8_t *payload, *out;
  size_t length, out_length;
  int64_t at;
  if (argc < 3 || !bytes_of(env, argv[0], &payload, &length) || !bytes_of(env, argv[1], &out, &out_length) ||
      !int_of(env, argv[2], &at))
    return fail(env, "decompressPage(payload, out, at)");
  if (at < 0 || (uint64_t)at + PAGE_BYTES > out_length) return fail(env, "decompressPage: no room for a page at `at`");
  napi_value result;
  napi_get_boolean(env, lz4_payload_page(payload, length, out + at), &result);
  return result;
}

napi_value page_records_exports(napi_env env, napi_value exports) {
  napi_property_descriptor properties[] = {
      {"encodePageRecords", NULL, encode_page_records, NULL, NULL, NULL, napi_default, NULL},
      {"decodePageRecords", NULL, decode_page_records, NULL, NULL, NULL, napi_default, NULL},
      {"compressPage", NULL, compress_page, NULL, NULL, NULL, napi_default, NULL},
      {"decompressPage", NULL, decompress_page, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof(properties) / sizeof(properties[0]), properties);
  return exports;
}
