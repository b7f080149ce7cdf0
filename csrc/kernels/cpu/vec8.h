// Eight-lane fp32 vectors written with GCC vector extensions. The including translation unit
// decides the instruction set (AVX2 + FMA + F16C under a target pragma, or the portable default),
// so one source serves both. Everything here lives in the caller's namespace CHUNKATTN_CPU_ISA.
#pragma once

#include <cstdint>
#include <cstring>

// The portable build passes 256-bit vectors between inline functions only; no ABI is crossed.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace chunkattn::cpu::CHUNKATTN_CPU_ISA {

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef uint32_t v8u __attribute__((vector_size(32)));
typedef uint16_t v8u16 __attribute__((vector_size(16)));
typedef int8_t v8i8 __attribute__((vector_size(8)));
typedef _Float16 v8h __attribute__((vector_size(16)));

struct bf16_t { uint16_t bits; };
struct fp16_t { uint16_t bits; };

inline v8f splat(float x) { return v8f{x, x, x, x, x, x, x, x}; }
inline v8f load8(const float* p) { v8f v; std::memcpy(&v, p, sizeof(v)); return v; }
inline void store8(float* p, v8f v) { std::memcpy(p, &v, sizeof(v)); }

// Eight consecutive stored values as fp32 (int8 values still unscaled).
inline v8f load8(const fp16_t* p) { v8h h; std::memcpy(&h, p, sizeof(h)); return __builtin_convertvector(h, v8f); }
inline v8f load8(const bf16_t* p) {
  v8u16 b; std::memcpy(&b, p, sizeof(b));
  v8u w = __builtin_convertvector(b, v8u) << 16;
  return (v8f)w;  // bit cast
}
inline v8f load8(const int8_t* p) { v8i8 b; std::memcpy(&b, p, sizeof(b)); return __builtin_convertvector(b, v8f); }

inline float to_float(float x) { return x; }
inline float to_float(fp16_t x) { _Float16 h; std::memcpy(&h, &x.bits, 2); return static_cast<float>(h); }
inline float to_float(bf16_t x) { uint32_t w = uint32_t(x.bits) << 16; float f; std::memcpy(&f, &w, 4); return f; }

inline void from_float(float x, float* out) { *out = x; }
inline void from_float(float x, fp16_t* out) { _Float16 h = static_cast<_Float16>(x); std::memcpy(&out->bits, &h, 2); }
inline void from_float(float x, bf16_t* out) {  // round to nearest even
  uint32_t w; std::memcpy(&w, &x, 4);
  out->bits = static_cast<uint16_t>((w + 0x7FFFu + ((w >> 16) & 1u)) >> 16);
}

inline float hsum(v8f v) {
  v8f a = v + __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3);
  a = a + __builtin_shufflevector(a, a, 2, 3, 0, 1, 6, 7, 4, 5);
  a = a + __builtin_shufflevector(a, a, 1, 0, 3, 2, 5, 4, 7, 6);
  return a[0];
}

inline v8f vmax(v8f a, v8f b) { return a > b ? a : b; }

inline float hmax(v8f v) {
  v8f a = vmax(v, __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3));
  a = vmax(a, __builtin_shufflevector(a, a, 2, 3, 0, 1, 6, 7, 4, 5));
  a = vmax(a, __builtin_shufflevector(a, a, 1, 0, 3, 2, 5, 4, 7, 6));
  return a[0];
}

// In-register 8x8 transpose: r[i][j] -> r[j][i] (unpack, shuffle, then 128-bit lane permute).
inline void transpose8(v8f r[8]) {
  v8f t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4) {
    for (int j = 0; j < 2; ++j) {
      u[i + 2 * j] = __builtin_shufflevector(t[i + j], t[i + j + 2], 0, 1, 8, 9, 4, 5, 12, 13);
      u[i + 2 * j + 1] = __builtin_shufflevector(t[i + j], t[i + j + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    }
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = __builtin_shufflevector(u[i], u[i + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    r[i + 4] = __builtin_shufflevector(u[i], u[i + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}

// exp(x), Cephes-style polynomial; relative error ~1e-7 over [-87, 88], 0 below.
inline v8f exp8(v8f x) {
  const v8f lo = splat(-87.3f);
  v8i underflow = x < lo;
  x = vmax(x, lo);
  x = x < splat(88.3f) ? x : splat(88.3f);
  v8f fx = x * splat(1.44269504088896341f) + splat(0.5f);
  v8f fl = __builtin_convertvector(__builtin_convertvector(fx, v8i), v8f);
  fl = fl > fx ? fl - splat(1.0f) : fl;
  x = x - fl * splat(0.693359375f) - fl * splat(-2.12194440e-4f);
  v8f y = splat(1.9875691500e-4f);
  y = y * x + splat(1.3981999507e-3f);
  y = y * x + splat(8.3334519073e-3f);
  y = y * x + splat(4.1665795894e-2f);
  y = y * x + splat(1.6666665459e-1f);
  y = y * x + splat(5.0000001201e-1f);
  y = y * x * x + x + splat(1.0f);
  v8i n = (__builtin_convertvector(fl, v8i) + 127) << 23;
  y = y * (v8f)n;  // bit cast: 2^n
  return underflow ? splat(0.0f) : y;
}

}  // namespace chunkattn::cpu::CHUNKATTN_CPU_ISA
