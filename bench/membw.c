// Memory read bandwidth of this machine, the ceiling of single-token decode: every weight is read once per
// token, so decode tok/s can be at most (bandwidth / plan bytes). Each of T threads sums its own half (or
// share) of a buffer far larger than the caches with 256-bit loads, 5 times; prints GB/s per pass.
//
//   gcc -O2 -mavx2 -pthread bench/membw.c -o membw && ./membw 2 1024
//
// Arguments: threads (default 2), buffer MiB (default 1024). The buffer is advised for transparent huge
// pages, as unicorn-rt's plan memory is.
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static const unsigned char *buf;
static size_t share;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *reader(void *arg) {
    const unsigned char *p = buf + (size_t)arg * share;
    __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
    for (size_t i = 0; i + 128 <= share; i += 128) {
        a = _mm256_add_epi32(a, _mm256_load_si256((const __m256i *)(p + i)));
        b = _mm256_add_epi32(b, _mm256_load_si256((const __m256i *)(p + i + 32)));
        c = _mm256_add_epi32(c, _mm256_load_si256((const __m256i *)(p + i + 64)));
        d = _mm256_add_epi32(d, _mm256_load_si256((const __m256i *)(p + i + 96)));
    }
    static volatile int sink;
    int out[8];
    _mm256_storeu_si256((__m256i *)out, _mm256_add_epi32(_mm256_add_epi32(a, b), _mm256_add_epi32(c, d)));
    sink = out[0];
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    size_t mib = argc > 2 ? strtoul(argv[2], NULL, 10) : 1024;
    if (threads < 1 || threads > 256 || mib < 64) {
        fprintf(stderr, "usage: membw [threads 1..256] [MiB >= 64]\n");
        return 2;
    }
    size_t len = mib << 20;
    unsigned char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    madvise(m, len, MADV_HUGEPAGE);
    memset(m, 1, len);
    buf = m;
    share = len / threads / 128 * 128;
    pthread_t tid[256];
    for (int pass = 0; pass < 5; pass++) {
        double t0 = now();
        for (long i = 1; i < threads; i++) pthread_create(&tid[i], NULL, reader, (void *)i);
        reader(0);
        for (long i = 1; i < threads; i++) pthread_join(tid[i], NULL);
        printf("%d threads: %.1f GB/s\n", threads, share * threads / (now() - t0) / 1e9);
    }
    return 0;
}
