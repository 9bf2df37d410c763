// The jina-embeddings-v4 rules in one place: tasks, roles, prefixes, trained
// Matryoshka dims, how a file name says its task, and which official GGUF
// repository holds each task. The Python facade reads these from the
// compiled module instead of restating them.
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace jv4::jina {

// The three tasks, in the reference's order.
const std::vector<std::string>& tasks();
// The task of a call that names none where the model serves several (the
// official models' default, the first of tasks()).
inline constexpr const char* kDefaultTask = "retrieval";
// "query" / "passage" (the reference's prompt_name).
const std::vector<std::string>& roles();
// Trained Matryoshka widths: 128 ... 2048.
const std::vector<int>& trained_dims();

// The prefix for (task, role); std::invalid_argument naming the allowed values.
std::string prefix(const std::string& task, const std::string& role);

// Throw std::invalid_argument listing the allowed values when the argument is
// not one. `name`: the argument's name in the message ("merge", "adapter
// task"); `or_none`: the message says None is allowed too.
void check_task(const std::string& task, const std::string& name = "task", bool or_none = false);
// that message, for a value shown as `got` (e.g. a Python repr)
std::string bad_task(const std::string& got, const std::string& name = "task", bool or_none = false);
// "'retrieval', 'text-matching', 'code'"
std::string quoted_tasks();
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

// The GGUF keys and tensor names of `jv4 convert`'s files, read here and
// written by python/jv4/checkpoint.py, which takes them from
// jv4._core.GGUF_KEYS (this table): one definition for both sides. A
// "{task}" / "{role}" in a template is filled in by gguf_key().
inline constexpr const char* kGgufBase = "jina_v4.base";                   // bool: a base model
inline constexpr const char* kGgufTask = "jina_v4.task";                   // an adapter's (or merged file's) task
inline constexpr const char* kGgufSource = "jina_v4.source";               // "jv4 convert"
inline constexpr const char* kGgufPrefix = "jina_v4.prefix.{role}";        // an adapter's prefixes
inline constexpr const char* kGgufProjectorTasks = "jina_v4.projector.tasks";
inline constexpr const char* kGgufProjectorWeight = "multi_vector.{task}.weight";  // F32 [n_embd, out]
inline constexpr const char* kGgufProjectorBias = "multi_vector.{task}.bias";      // F32 [out]
// the vision tower's pixel budget, from the checkpoint's preprocessor_config.json
// (llama.cpp's clip keys; its loader does not read them for Qwen2.5-VL, jv4 does)
inline constexpr const char* kGgufImageMinPixels = "clip.vision.image_min_pixels";
inline constexpr const char* kGgufImageMaxPixels = "clip.vision.image_max_pixels";

// The prompt the reference wraps every image in (JinaEmbeddingsV4Processor:
// "<|im_start|>user\n<|vision_start|><|image_pad|>...<|vision_end|>Describe the
// image.<|im_end|>\n"); mtmd adds the vision markers around the image. No
// task prefix: images read the same for every task and role.
inline constexpr const char* kImagePromptBefore = "<|im_start|>user\n";
inline constexpr const char* kImagePromptAfter = "Describe the image.<|im_end|>\n";
// The control tokens of that prompt, each one token of the text model's
// vocabulary (a vocabulary without them would read them as ~10 text tokens
// and give other vectors: such a base is refused). <|image_pad|> is the
// reference's placeholder for each image row, which the rows replace.
inline constexpr const char* kImagePromptTokens[] = {"<|im_start|>", "<|vision_start|>", "<|image_pad|>",
                                                     "<|vision_end|>", "<|im_end|>"};
// (name, template) of each, as jv4._core.GGUF_KEYS holds them
const std::vector<std::pair<std::string, std::string>>& gguf_keys();
// a template with its one {...} placeholder replaced by value
std::string gguf_key(const std::string& tmpl, const std::string& value);

// Lowercase, '_' and ' ' turned into '-'.
std::string lower_dashed(std::string s);

}  // namespace jv4::jina
