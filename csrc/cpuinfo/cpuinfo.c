/* jv4._cpuinfo: which x86-64 instruction-set levels this CPU and OS can run.
 *
 * Compiled for the plainest x86-64 (no -m flags), so that it loads on any
 * x86-64 machine; the loader (jv4/_load.py) asks it before importing one of
 * the engine builds, each compiled for one level. A level needs both the
 * CPU's feature bits (CPUID) and the OS's consent to save the wider
 * registers (XCR0 via XGETBV, when OSXSAVE is set) - a CPU with AVX-512
 * under an OS that does not save ZMM state cannot run AVX-512 code.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__) || defined(_M_IX86)
#define JV4_X86 1
#if defined(_MSC_VER)
#include <intrin.h>
static void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
  int v[4];
  __cpuidex(v, (int)leaf, (int)sub);
  for (int i = 0; i < 4; ++i) r[i] = (uint32_t)v[i];
}
static uint64_t xgetbv0(void) { return _xgetbv(0); }
#else
#include <cpuid.h>
static void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
  r[0] = r[1] = r[2] = r[3] = 0;
  if (leaf < 0x80000000u) {
    if (__get_cpuid_max(0, 0) < leaf) return;
  } else if (__get_cpuid_max(0x80000000u, 0) < leaf) {
    return;
  }
  __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
}
static uint64_t xgetbv0(void) {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return ((uint64_t)hi << 32) | lo;
}
#endif
#endif

#define BIT(r, n) (((r) >> (n)) & 1u)

static int add(PyObject* d, const char* name, int value) {
  PyObject* v = PyBool_FromLong(value);
  int rc = PyDict_SetItemString(d, name, v);
  Py_DECREF(v);
  return rc;
}

/* features() -> dict of the individual features the levels are made of. */
static PyObject* features(PyObject* self, PyObject* unused) {
  (void)self;
  (void)unused;
  PyObject* d = PyDict_New();
  if (d == NULL) return NULL;
#ifdef JV4_X86
  uint32_t l1[4], l7[4], l71[4], e1[4];
  cpuid(1, 0, l1);
  cpuid(7, 0, l7);
  cpuid(7, 1, l71);
  cpuid(0x80000001u, 0, e1);
  const int osxsave = BIT(l1[2], 27);
  const uint64_t xcr0 = osxsave ? xgetbv0() : 0;
  const int os_ymm = (xcr0 & 0x6) == 0x6;     /* XMM and YMM state */
  const int os_zmm = (xcr0 & 0xe6) == 0xe6;   /* plus opmask, ZMM_Hi256, Hi16_ZMM */
  struct { const char* name; int value; } f[] = {
      {"sse3", BIT(l1[2], 0)},       {"ssse3", BIT(l1[2], 9)},
      {"sse4_1", BIT(l1[2], 19)},    {"sse4_2", BIT(l1[2], 20)},
      {"popcnt", BIT(l1[2], 23)},    {"cx16", BIT(l1[2], 13)},
      {"lahf", BIT(e1[2], 0)},       {"osxsave", osxsave},
      {"os_ymm", os_ymm},            {"os_zmm", os_zmm},
      {"avx", BIT(l1[2], 28)},       {"fma", BIT(l1[2], 12)},
      {"f16c", BIT(l1[2], 29)},      {"movbe", BIT(l1[2], 22)},
      {"avx2", BIT(l7[1], 5)},       {"bmi1", BIT(l7[1], 3)},
      {"bmi2", BIT(l7[1], 8)},       {"lzcnt", BIT(e1[2], 5)},
      {"avx512f", BIT(l7[1], 16)},   {"avx512dq", BIT(l7[1], 17)},
      {"avx512cd", BIT(l7[1], 28)},  {"avx512bw", BIT(l7[1], 30)},
      {"avx512vl", BIT(l7[1], 31)},  {"avx512vbmi", BIT(l7[2], 1)},
      {"avx512vnni", BIT(l7[2], 11)}, {"avx512bf16", BIT(l71[0], 5)},
      {"avx_vnni", BIT(l71[0], 4)},  {"amx_tile", BIT(l7[3], 24)},
  };
  for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); ++i) {
    if (add(d, f[i].name, f[i].value) != 0) {
      Py_DECREF(d);
      return NULL;
    }
  }
#endif
  return d;
}

static PyMethodDef methods[] = {
    {"features", features, METH_NOARGS, "CPUID/XCR0 feature bits of this machine (x86 only)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cpuinfo",
                                    "x86 CPU features for jv4's build selection.", -1, methods};

PyMODINIT_FUNC PyInit__cpuinfo(void) { return PyModule_Create(&module); }
