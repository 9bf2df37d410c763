// jv4._core._stages: the engine's pure stages (batch planner, output stage,
// load policy) exposed alone, so tests can check them against independent
// references without a model. Not part of the public API. A class of static
// methods rather than a submodule, so that the generated stub is one file.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cctype>
#include <string>
#include <tuple>
#include <vector>

#include "bindings/common.hpp"
#include "engine/batch_plan.hpp"
#include "engine/coalesce.hpp"
#include "engine/load_policy.hpp"
#include "ggml.h"
#include "llama.h"
#include "engine/output.hpp"

namespace jv4py {

namespace {
struct Stages {};

std::string upper(std::string s) {
  for (char& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

ggml_type type_named(const std::string& name) {  // "Q4_K", "F16" (any case)
  for (int t = 0; t < GGML_TYPE_COUNT; ++t) {
    const char* n = ggml_type_name(static_cast<ggml_type>(t));
    if (n != nullptr && upper(name) == upper(n)) return static_cast<ggml_type>(t);
  }
  throw std::invalid_argument("no ggml type named '" + name + "'");
}

llama_ftype ftype_named(const std::string& name) {
  // the names llama_ftype_name gives, e.g. "F16", "all F32", "Q4_K - Medium"
  for (int t = 0; t < 64; ++t) {
    if (name == llama_ftype_name(static_cast<llama_ftype>(t))) return static_cast<llama_ftype>(t);
  }
  throw std::invalid_argument("no llama file type named '" + name + "'");
}
}  // namespace

void register_stages(py::module_& parent) {
  py::class_<Stages> m(parent, "_stages", "the engine's pure stages, for tests");
  m.def_static(
      "load_policy",
      [](const std::vector<std::string>& tensor_types, bool x86, bool avx512_vnni, bool avx512_bf16, int n_gpus,
         const jv4::ModelOptions& options, const std::string& file_type) {
        jv4::FileFacts file;
        for (const std::string& t : tensor_types) file.tensor_types.push_back(type_named(t));
        jv4::BuildFacts build;
        build.x86 = x86;
        build.avx512_vnni = avx512_vnni;
        build.avx512_bf16 = avx512_bf16;
        build.n_gpus = n_gpus;
        const jv4::LoadPolicy p = jv4::decide_load(file, build, options);
        py::dict out;
        out["n_gpu_layers"] = p.n_gpu_layers;
        out["main_gpu"] = p.main_gpu;
        out["cpu_only"] = p.cpu_only;
        out["f16_as_bf16"] = p.f16_as_bf16;
        out["repack"] = p.repack;
        out["load_mode"] = p.load_mode();
        out["kv_cache_type"] = jv4::decide_kv_cache_type(p, build, options, ftype_named(file_type));
        return out;
      },
      py::arg("tensor_types"), py::arg("x86"), py::arg("avx512_vnni"), py::arg("avx512_bf16"), py::arg("n_gpus"),
      py::arg("options"), py::arg("file_type"),
      "the load decisions for a file holding tensors of these ggml types (and of this llama file type) "
      "on a build with these facts");
  m.def_static(
      "context_policy",
      [](const jv4::ModelOptions& options, int n_ctx_train, int hardware_threads) {
        const jv4::ContextPolicy c = jv4::decide_context(options, n_ctx_train, hardware_threads);
        return py::make_tuple(c.max_length, c.batch_tokens, c.n_threads);
      },
      py::arg("options"), py::arg("n_ctx_train"), py::arg("hardware_threads"),
      "(max_length, batch_tokens, n_threads)");
  m.def_static(
      "plan_decodes",
      [](const std::vector<size_t>& n_tokens, int batch_tokens, int max_seqs) {
        jv4::Plan plan = jv4::plan_decodes(n_tokens, batch_tokens, max_seqs);
        py::list decodes;
        for (const jv4::Decode& d : plan.decodes) {
          py::list spans;
          for (const jv4::Span& s : d.spans) spans.append(py::make_tuple(s.text, s.seq, s.begin, s.end, s.last));
          decodes.append(py::make_tuple(d.clear, spans));
        }
        return py::make_tuple(plan.empty, decodes, plan.longest);
      },
      py::arg("n_tokens"), py::arg("batch_tokens"), py::arg("max_seqs"),
      "(empty texts, [(clear, [(text, seq, begin, end, last)])], longest)");
  m.def_static(
      "pick_group",
      [](const std::vector<std::tuple<bool, std::string, size_t, size_t>>& queue, int batch_tokens, int max_seqs,
         bool coalesce) {
        std::vector<jv4::QueuedCall> q;
        for (const auto& [text, task, n_tokens, n_texts] : queue) q.push_back({text, task, n_tokens, n_texts});
        return py::make_tuple(jv4::pick_group(q, batch_tokens, max_seqs, coalesce),
                              jv4::group_has_room(q, batch_tokens, max_seqs));
      },
      py::arg("queue"), py::arg("batch_tokens"), py::arg("max_seqs"), py::arg("coalesce") = true,
      "queue: [(text call, task, n_tokens, n_texts)], oldest first -> (indices of the calls that run next, "
      "whether the oldest would wait for company)");
  m.def_static(
      "pool",
      [](py::array_t<float, py::array::c_style | py::array::forcecast> hidden, const std::string& pooling,
         int dim) {
        if (hidden.ndim() != 2) throw std::invalid_argument("hidden must be (n_tokens, n_embd)");
        const jv4::Pooling p = jv4::parse_pooling(pooling);
        const int n = static_cast<int>(hidden.shape(0)), w = static_cast<int>(hidden.shape(1));
        std::vector<double> acc(static_cast<size_t>(w), 0.0);
        size_t pooled = 0;
        for (int t = 0; t < n; ++t) {
          if (!jv4::pooled_token(p, t, n)) continue;
          jv4::accumulate_row(acc.data(), hidden.data(t, 0), w);
          ++pooled;
        }
        py::array_t<float> out(dim);
        jv4::finish_pooled(acc.data(), w, pooled, p, dim, out.mutable_data(), 0);
        return out;
      },
      py::arg("hidden"), py::arg("pooling"), py::arg("dim"),
      "the pooled vector of one text from its tokens' hidden states");
  m.def_static(
      "project",
      [](py::array_t<float, py::array::c_style | py::array::forcecast> hidden,
         py::array_t<float, py::array::c_style | py::array::forcecast> weight,
         py::array_t<float, py::array::c_style | py::array::forcecast> bias) {
        if (hidden.ndim() != 2 || weight.ndim() != 2 || bias.ndim() != 1 || weight.shape(1) != hidden.shape(1) ||
            bias.shape(0) != weight.shape(0)) {
          throw std::invalid_argument("shapes must be hidden (n, in), weight (out, in), bias (out)");
        }
        jv4::Projector p;
        p.n_in = static_cast<int>(weight.shape(1));
        p.n_out = static_cast<int>(weight.shape(0));
        p.weight.assign(weight.data(), weight.data() + weight.size());
        p.bias.assign(bias.data(), bias.data() + bias.size());
        py::array_t<float> out({hidden.shape(0), weight.shape(0)});
        for (py::ssize_t t = 0; t < hidden.shape(0); ++t) {
          jv4::project_token(p, hidden.data(t, 0), out.mutable_data(t, 0), static_cast<size_t>(t));
        }
        return out;
      },
      py::arg("hidden"), py::arg("weight"), py::arg("bias"),
      "every token's normalise(weight @ h + bias)");
}

}  // namespace jv4py
