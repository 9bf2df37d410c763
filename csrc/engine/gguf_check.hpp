// Checks of a GGUF file's metadata that llama.cpp trusts, made before it
// loads the file. A model file is untrusted input: values that pass
// llama.cpp's loader but abort (or divide by zero) later, inside ggml's
// compute, are refused here with a message naming the key or tensor. What
// llama.cpp's loader itself asserts is turned into an error by a fetch-time
// patch (patches/llama.cpp/0007-loader-checks-throw.patch); this file covers
// what it does not. Found by tools/fuzz_gguf.py.
#pragma once
#include <string>

namespace jv4 {

// Throws ModelLoadError("<path>: <what is wrong>"). Returns quietly when the
// file cannot be parsed at all (the loader then says why).
void check_gguf(const std::string& path);

}  // namespace jv4
