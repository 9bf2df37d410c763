// jv4: included by the model loader's files after their own headers
// (jv4's patches/llama.cpp/0007), so that a failed check on what a model file
// says throws instead of aborting the process. Deliberately without an
// include guard for the macros: every inclusion redefines them.
#include <cstdio>
#include <stdexcept>
#include <string>
#ifndef JV4_CHECK_TEXT
#define JV4_CHECK_TEXT  // once per translation unit (llama.cpp may build unity files)
template <typename... A>
static std::string jv4_check_text(const char * file, int line, const char * fmt, A... args) {
    char buf[1024];
    int n = std::snprintf(buf, sizeof(buf), "%s:%d: ", file, line);
    if (n < 0 || n >= (int) sizeof(buf)) n = 0;
    if constexpr (sizeof...(A) == 0) { std::snprintf(buf + n, sizeof(buf) - n, "%s", fmt); }
    else { std::snprintf(buf + n, sizeof(buf) - n, fmt, args...); }
    return buf;
}
#endif
#undef GGML_ABORT
#define GGML_ABORT(...) throw std::runtime_error(jv4_check_text(__FILE__, __LINE__, __VA_ARGS__))
#undef GGML_ASSERT
#define GGML_ASSERT(x) do { if (!(x)) GGML_ABORT("GGML_ASSERT(%s) failed", #x); } while (0)

