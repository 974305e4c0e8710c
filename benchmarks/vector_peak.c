/* Peak throughput of one core's AVX-512 units: float32 FMA vs AVX512-BF16 dot product.
 *
 * Why: bfloat16 convolutions on a CPU without AMX run on VDPBF16PS, which does
 * 2x the multiply-adds of VFMADD231PS per instruction; whether bf16 can beat float32
 * depends on how many of each the core issues per cycle. This measures it: 24
 * independent accumulators in registers (no memory traffic, latency hidden), each
 * instruction on 512-bit registers: FMA = 16 multiply-adds = 32 FLOP, VDPBF16PS =
 * 32 bf16 products summed pairwise into 16 floats = 64 FLOP.
 *
 *   gcc -O2 -funroll-loops benchmarks/vector_peak.c -o /tmp/vector_peak && /tmp/vector_peak
 *
 * Prints one row per repetition and the ratio bf16 / fp32 (the most a compute-bound
 * bf16 kernel can gain over fp32 on this core).
 */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#define CHAINS 24

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

__attribute__((target("avx512f"))) static double fp32_fma(long iterations) {
  __m512 acc[CHAINS];
  const __m512 a = _mm512_set1_ps(1.0001f), b = _mm512_set1_ps(0.9999f);
  for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_set1_ps((float)i);
  double start = now();
  for (long k = 0; k < iterations; k++) {
#pragma GCC unroll 24
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_fmadd_ps(a, b, acc[i]);
  }
  double seconds = now() - start;
  float sink = 0;
  for (int i = 0; i < CHAINS; i++) sink += _mm512_reduce_add_ps(acc[i]);
  if (sink == 1234.5f) printf(" ");  /* keeps the results alive */
  return (double)iterations * CHAINS * 32 / seconds;
}

__attribute__((target("avx512f,avx512bf16"))) static double bf16_dot(long iterations) {
  __m512 acc[CHAINS];
  const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80);  /* bf16 1.0 */
  for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_set1_ps((float)i);
  double start = now();
  for (long k = 0; k < iterations; k++) {
#pragma GCC unroll 24
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_dpbf16_ps(acc[i], a, a);
  }
  double seconds = now() - start;
  float sink = 0;
  for (int i = 0; i < CHAINS; i++) sink += _mm512_reduce_add_ps(acc[i]);
  if (sink == 1234.5f) printf(" ");
  return (double)iterations * CHAINS * 64 / seconds;
}

int main(void) {
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bf16")) {
    printf("This CPU lacks AVX-512F or AVX512-BF16: nothing to compare.\n");
    return 1;
  }
  const long iterations = 200000000 / CHAINS;
  printf("| repetition | fp32 FMA GFLOP/s/core | bf16 VDPBF16PS GFLOP/s/core | bf16 / fp32 |\n");
  printf("|--:|--:|--:|--:|\n");
  for (int r = 1; r <= 3; r++) {
    double f = fp32_fma(iterations), h = bf16_dot(iterations);
    printf("| %d | %.1f | %.1f | %.2fx |\n", r, f / 1e9, h / 1e9, h / f);
  }
  return 0;
}
