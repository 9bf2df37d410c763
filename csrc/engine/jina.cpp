// jina-embeddings-v4 rules (see jina.hpp). Facts from the reference model:
// prefixes `Query: ` / `Passage: ` (text-matching is symmetric and always
// uses `Query: `), trained dims 128..2048.
#include "engine/jina.hpp"

#include <cctype>
#include <stdexcept>

#include "engine/errors.hpp"

namespace jv4::jina {
namespace {

std::string quoted_list(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "'" : ", '") + s + "'";
  return out;
}

bool contains(const std::vector<std::string>& v, const std::string& s) {
  for (const auto& x : v) {
    if (x == s) return true;
  }
  return false;
}

}  // namespace

const std::vector<std::string>& tasks() {
  static const std::vector<std::string> t{"retrieval", "text-matching", "code"};
  return t;
}

const std::vector<std::string>& roles() {
  static const std::vector<std::string> r{"query", "passage"};
  return r;
}

const std::vector<int>& trained_dims() {
  static const std::vector<int> d{128, 256, 512, 1024, 2048};
  return d;
}

std::string bad_task(const std::string& got, const std::string& name, bool or_none) {
  return name + " must be one of " + quoted_list(tasks()) + (or_none ? " or None" : "") + " (got " + got + ")";
}

void check_task(const std::string& task, const std::string& name, bool or_none) {
  if (!contains(tasks(), task)) throw BadArgument(name, bad_task("'" + task + "'", name, or_none));
}

std::string quoted_tasks() { return quoted_list(tasks()); }

void check_role(const std::string& role) {
  if (!contains(roles(), role)) {
    throw BadArgument("role", "role must be one of " + quoted_list(roles()) + " (got '" + role + "')");
  }
}

std::string prefix(const std::string& task, const std::string& role) {
  check_role(role);
  check_task(task);
  if (task == "text-matching") return "Query: ";  // symmetric task
  return role == "query" ? "Query: " : "Passage: ";
}

std::string lower_dashed(std::string s) {
  for (char& c : s) {
    if (c == '_' || c == ' ') c = '-';
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return s;
}

bool is_jina_v4_name(const std::string& name) {
  return lower_dashed(name).find("jina-embeddings-v4") != std::string::npos;
}

std::string task_from_name(const std::string& raw) {
  const std::string s = lower_dashed(raw);
  if (s.find("retrieval") != std::string::npos) return "retrieval";
  if (s.find("matching") != std::string::npos) return "text-matching";
  if (s.find("text-code") != std::string::npos || s.find("-code") != std::string::npos) return "code";
  return "";
}

std::string name_tag(const std::string& task) {
  check_task(task);
  return task == "text-matching" ? "matching" : task;
}

std::string official_repo(const std::string& task) {
  return "jinaai/jina-embeddings-v4-text-" + name_tag(task) + "-GGUF";
}

const std::vector<std::pair<std::string, std::string>>& gguf_keys() {
  static const std::vector<std::pair<std::string, std::string>> keys = {
      {"base", kGgufBase},
      {"task", kGgufTask},
      {"source", kGgufSource},
      {"prefix", kGgufPrefix},
      {"projector_tasks", kGgufProjectorTasks},
      {"projector_weight", kGgufProjectorWeight},
      {"projector_bias", kGgufProjectorBias},
      {"image_min_pixels", kGgufImageMinPixels},
      {"image_max_pixels", kGgufImageMaxPixels},
  };
  return keys;
}

std::string gguf_key(const std::string& tmpl, const std::string& value) {
  const size_t open = tmpl.find('{'), close = tmpl.find('}', open);
  if (open == std::string::npos || close == std::string::npos) return tmpl;
  return tmpl.substr(0, open) + value + tmpl.substr(close + 1);
}

}  // namespace jv4::jina
