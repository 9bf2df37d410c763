// Request policy, as a pure stage: what a call asks for (task, role, dim,
// multi-vector, images) checked against what the loaded model is, and what
// the decodes then need (the prefix, the task's adapter and projector, the
// output width). No llama.cpp, no I/O: Model gathers its facts once at load,
// and every call - and the server and the command, before they write
// anything - asks here. tests/test_request_policy.py checks it alone, as a
// table (jv4._core._stages.resolve_request).
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "engine/errors.hpp"  // BadArgument

namespace jv4 {

// What resolve_request needs of a model (Model::request_facts()).
struct RequestFacts {
  std::string path;                     // for messages
  bool jina_v4 = false;                 // a jina-embeddings-v4 model (prefixes, tasks)
  bool base = false;                    // a base model from `jv4 convert`: tasks come from adapters
  std::string task;                     // a merged file's own task ("" when unknown or a base)
  std::vector<std::string> adapters;    // tasks with a loaded adapter (jina::tasks() order)
  std::vector<std::string> projectors;  // tasks with a multi-vector projector
  int n_embd = 0;                       // the full output width
  bool vision = false;                  // a vision tower is loaded
};

// What embed() is asked for, after validation.
struct Request {
  std::string prefix;  // added in front of every text ("" for none)
  std::string task;    // jina-v4 task ("" for other models)
  int dim = 0;         // output width
  bool truncate = true;
  bool multivector = false;  // also per-token vectors (MultiOutput)
};

// The `dim` values a model allows: the trained Matryoshka widths up to its
// width for jina-v4 models, 1..n_embd for others.
std::vector<int> allowed_dims(const RequestFacts& m);

// A text call: BadArgument naming the argument and its allowed values.
// No task: the file's own (a base serving one task: that one). No dim: the
// full width.
Request resolve_request(const RequestFacts& m, const std::optional<std::string>& task, const std::string& role,
                        std::optional<int> dim, bool truncate, bool multivector = false);

// An image call: as a text call of role "query" with no prefix (images read
// the same for every task and role), and a vision tower must be loaded.
Request resolve_image_request(const RequestFacts& m, const std::optional<std::string>& task, std::optional<int> dim,
                              bool multivector);

}  // namespace jv4
