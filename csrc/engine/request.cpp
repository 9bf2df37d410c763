// Request policy (see request.hpp): pure checks of a call's arguments
// against a model's facts, every refusal naming the argument and what is
// allowed.
#include "engine/request.hpp"

#include <algorithm>
#include <filesystem>

#include "engine/jina.hpp"

namespace jv4 {
namespace {

std::string quoted(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& x : v) out += (out.empty() ? "'" : ", '") + x + "'";
  return out.empty() ? "none" : out;
}

std::string join_ints(const std::vector<int>& v) {
  std::string out;
  for (int d : v) out += (out.empty() ? "" : ", ") + std::to_string(d);
  return out;
}

bool has(const std::vector<std::string>& v, const std::string& x) { return std::find(v.begin(), v.end(), x) != v.end(); }

// "retrieval" asked of the 'code' file: name the file that serves it
std::string other_task_file(const RequestFacts& m, const std::string& want) {
  const std::string file = std::filesystem::path(m.path).filename().string();
  const std::string want_tag = "text-" + jina::name_tag(want);
  const std::string have_tag = "text-" + jina::name_tag(m.task);
  const size_t at = jina::lower_dashed(file).find(have_tag);
  if (at != std::string::npos) return file.substr(0, at) + want_tag + file.substr(at + have_tag.size());
  return "jina-embeddings-v4-" + want_tag + "-<quant>.gguf";
}

std::string resolve_task(const RequestFacts& m, const std::optional<std::string>& task) {
  if (task) jina::check_task(*task);
  if (m.base) {
    if (m.adapters.empty()) {
      throw BadArgument("task", m.path + " is the jina-embeddings-v4 base model without its task adapters; "
                                "load the folder `jv4 convert` wrote (jv4.Model(folder)) or pass adapters=");
    }
    if (!task) {
      if (m.adapters.size() != 1) {
        throw BadArgument("task", "this model serves several tasks; pass task= one of " + quoted(m.adapters));
      }
      return m.adapters[0];
    }
    if (!has(m.adapters, *task)) {
      throw BadArgument("task", "no adapter for task='" + *task + "' was loaded (loaded: " + quoted(m.adapters) + ")");
    }
    return *task;
  }
  if (!task) {
    if (m.task.empty()) {
      throw BadArgument("task", m.path + ": cannot tell which jina-embeddings-v4 task this file was merged for "
                                "(neither general.name nor the file name says); pass task= one of " +
                                jina::quoted_tasks());
    }
    return m.task;
  }
  if (!m.task.empty() && *task != m.task) {
    throw BadArgument("task", "task='" + *task + "' does not match this file: " + m.path +
                                  " is the jina-embeddings-v4 '" + m.task + "' model; load " +
                                  other_task_file(m, *task) + " for task='" + *task + "' (or pass task=None)");
  }
  return *task;
}

}  // namespace

std::vector<int> allowed_dims(const RequestFacts& m) {
  std::vector<int> out;
  if (m.jina_v4) {
    for (int d : jina::trained_dims()) {
      if (d <= m.n_embd) out.push_back(d);
    }
  } else {
    for (int d = 1; d <= m.n_embd; ++d) out.push_back(d);
  }
  return out;
}

Request resolve_request(const RequestFacts& m, const std::optional<std::string>& task, const std::string& role,
                        std::optional<int> dim, bool truncate, bool multivector) {
  Request req;
  req.truncate = truncate;
  req.multivector = multivector;
  jina::check_role(role);
  if (m.jina_v4) {
    req.task = resolve_task(m, task);
    req.prefix = jina::prefix(req.task, role);
  } else {
    if (task) {
      throw BadArgument("task", "task applies only to jina-embeddings-v4 models; " + m.path +
                                    " is not one (no prefix is added): leave task=None");
    }
    if (role != "query") {
      throw BadArgument("role", "role applies only to jina-embeddings-v4 models; " + m.path +
                                    " is not one (no prefix is added): leave role='query'");
    }
  }
  if (multivector) {
    if (!m.jina_v4) {
      throw BadArgument("multivector", "multi-vector output is a jina-embeddings-v4 feature; " + m.path + " is not one");
    }
    if (m.projectors.empty()) {
      throw BadArgument("multivector", "multi-vector output needs the projector file `jv4 convert` writes "
                                       "(*-projector.gguf): load the converted folder or pass projector=");
    }
    if (!has(m.projectors, req.task)) {
      throw BadArgument("multivector", "the projector file has no projector for task='" + req.task + "' (it has " +
                                           quoted(m.projectors) + ")");
    }
  }
  if (!dim) {
    req.dim = m.n_embd;
  } else {
    const std::vector<int> allowed = allowed_dims(m);
    if (!std::binary_search(allowed.begin(), allowed.end(), *dim)) {
      const std::string list = m.jina_v4 ? join_ints(allowed) : "1.." + std::to_string(m.n_embd);
      throw BadArgument("dim", "dim must be one of " + list + " (or None for " + std::to_string(m.n_embd) +
                                   "); got " + std::to_string(*dim));
    }
    req.dim = *dim;
  }
  return req;
}

Request resolve_image_request(const RequestFacts& m, const std::optional<std::string>& task, std::optional<int> dim,
                              bool multivector) {
  if (!m.vision) {
    throw BadArgument("images", m.path + " was loaded without its vision tower: load the folder `jv4 convert` "
                                "wrote (it holds the mmproj) or pass mmproj=");
  }
  // images take no prefix: the task picks the adapter (and projector) only
  Request req = resolve_request(m, task, "query", dim, true, multivector);
  req.prefix.clear();
  return req;
}

}  // namespace jv4
