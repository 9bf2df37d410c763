// jina-v4 multi-vector projectors: the file jv4's converter writes next to
// the base model ("<name>-projector.gguf"), one Linear(n_embd -> 128) per
// task with that task's LoRA merged in, as tensors
// `multi_vector.<task>.weight` (F32, 128 x n_embd) and `multi_vector.<task>.bias`.
#pragma once
#include <map>
#include <string>

#include "engine/output.hpp"

namespace jv4 {

// The projectors of the file, by task. ModelLoadError naming the tensor or
// key when the file is not such a file, its shapes do not take `n_embd`
// inputs, or a value is not finite.
std::map<std::string, Projector> load_projectors(const std::string& path, int n_embd);

}  // namespace jv4
