/*
 * The lane digest that the memory check (chunk-digest.c) and the page check (page-digest.c) share:
 * eight 32-bit lanes, each an xxHash32-style accumulator (acc = rotl(acc + word * P2, 13) * P1) over
 * every eighth little-endian word, seeded, then avalanched; 32 bytes out. Every step is a bijection of
 * its lane for a fixed input, so one changed word always changes the digest. It runs at memory speed;
 * it is not a cryptographic hash, and nothing relies on it against a forger (the guest whose memory it
 * digests can only corrupt itself, and what it guards is checked again before a guest runs).
 */
#ifndef VMSCATTER_LANE_DIGEST_H
#define VMSCATTER_LANE_DIGEST_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define LANES 8
#define BLOCK_BYTES (LANES * 4)
#define LANE_DIGEST_BYTES (LANES * 4)

static const uint32_t P1 = 2654435761u, P2 = 2246822519u, P3 = 3266489917u;

static inline uint32_t rotl(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }

static inline uint32_t le32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Eight lanes fit one AVX2 register: where GCC can, a second build of the loop uses it when the CPU has it. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
__attribute__((target_clones("avx2", "default")))
#endif
static void lane_digest(const uint8_t *bytes, size_t length, const uint32_t seed[LANES], uint8_t *out) {
  uint32_t acc[LANES];
  memcpy(acc, seed, sizeof(acc));
  size_t whole = length - length % BLOCK_BYTES;
  for (size_t at = 0; at < whole; at += BLOCK_BYTES)
    for (int i = 0; i < LANES; i++) acc[i] = rotl(acc[i] + le32(bytes + at + 4 * i) * P2, 13) * P1;
  if (whole < length) {
    uint8_t tail[BLOCK_BYTES] = {0};
    memcpy(tail, bytes + whole, length - whole);
    for (int i = 0; i < LANES; i++) acc[i] = rotl(acc[i] + le32(tail + 4 * i) * P2, 13) * P1;
  }
  for (int i = 0; i < LANES; i++) {
    uint32_t h = acc[i] ^ (uint32_t)length;
    h ^= h >> 15;
    h *= P2;
    h ^= h >> 13;
    h *= P3;
    h ^= h >> 16;
    out[4 * i] = (uint8_t)h;
    out[4 * i + 1] = (uint8_t)(h >> 8);
    out[4 * i + 2] = (uint8_t)(h >> 16);
    out[4 * i + 3] = (uint8_t)(h >> 24);
  }
}

#endif
