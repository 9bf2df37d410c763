// The jina-embeddings-v4 rules in one place: tasks, roles, prefixes, trained
// Matryoshka dims, how a file name says its task, and which official GGUF
// repository holds each task. The Python facade reads these from the
// compiled module instead of restating them.
#pragma once
#include <string>
#include <vector>

namespace jv4::jina {

// The three tasks, in the reference's order.
const std::vector<std::string>& tasks();
// "query" / "passage" (the reference's prompt_name).
const std::vector<std::string>& roles();
// Trained Matryoshka widths: 128 ... 2048.
const std::vector<int>& trained_dims();

// The prefix for (task, role); std::invalid_argument naming the allowed values.
std::string prefix(const std::string& task, const std::string& role);

// Throw std::invalid_argument listing the allowed values when the argument is not one.
void check_task(const std::string& task);
void check_role(const std::string& role);

// True when a model name or file name says jina-embeddings-v4.
bool is_jina_v4_name(const std::string& name);
// "retrieval" / "text-matching" / "code" from a model or file name, or "".
std::string task_from_name(const std::string& name);
// The tag a task carries in official names: "retrieval", "matching", "code".
std::string name_tag(const std::string& task);
// The official GGUF repository of a task, e.g.
// "jinaai/jina-embeddings-v4-text-retrieval-GGUF".
std::string official_repo(const std::string& task);

// Lowercase, '_' and ' ' turned into '-'.
std::string lower_dashed(std::string s);

}  // namespace jv4::jina
