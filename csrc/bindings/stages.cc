// jv4._core._stages: the engine's pure stages (batch planner, output stage,
// load policy, request policy) and the scheduler exposed alone, so tests can check them against independent
// references without a model. Not part of the public API. A class of static
// methods rather than a submodule, so that the generated stub is one file.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <atomic>
#include <cctype>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "bindings/common.hpp"
#include "engine/batch_plan.hpp"
#include "engine/coalesce.hpp"
#include "engine/errors.hpp"
#include "engine/load_policy.hpp"
#include "engine/request.hpp"
#include "engine/scheduler.hpp"
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

py::tuple plan_tuple(const jv4::Plan& plan) {
  py::list decodes;
  for (const jv4::Decode& d : plan.decodes) {
    py::list spans;
    for (const jv4::Span& s : d.spans) spans.append(py::make_tuple(s.text, s.seq, s.begin, s.end, s.last));
    decodes.append(py::make_tuple(d.clear, spans));
  }
  return py::make_tuple(plan.empty, decodes, plan.longest);
}

// The scheduler alone, over jobs that only sleep: which jobs ran together,
// in which order, and what was withdrawn - without a model.
class SchedulerProbe {
 public:
  struct ProbeJob : jv4::Scheduler::Job {
    int id = 0;
    double work_ms = 0;
  };
  SchedulerProbe(int batch_tokens, int max_seqs, bool coalesce, double batch_wait_ms)
      : sched_([this](const std::vector<jv4::Scheduler::Job*>& g) { run(g); },
               jv4::Scheduler::Limits{batch_tokens, max_seqs, coalesce, batch_wait_ms}) {}
  // Queues job `id` and waits for it (GIL released): "done", "cancelled"
  // (withdrawn while queued: its flag set cancel_after_ms after queueing),
  // or the message of the error its work raised ("fail": a job that throws).
  std::string submit(int id, bool text, const std::string& task, size_t n_tokens, size_t n_texts, double work_ms,
                     std::optional<double> cancel_after_ms, bool fail) {
    ProbeJob job;
    job.id = id;
    job.work_ms = fail ? -1 : work_ms;
    job.shape = jv4::QueuedCall{text, task, n_tokens, n_texts};
    std::atomic<bool> cancel{false};
    job.cancel = &cancel;
    py::gil_scoped_release release;
    std::thread timer;
    if (cancel_after_ms) {
      timer = std::thread([&cancel, ms = *cancel_after_ms] {
        std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(ms));
        cancel = true;
      });
    }
    std::string result = "done";
    try {
      sched_.run(job);
    } catch (const jv4::Cancelled&) {
      result = "cancelled";
    } catch (const std::exception& e) {
      result = e.what();
    }
    if (timer.joinable()) timer.join();
    return result;
  }
  std::vector<std::vector<int>> groups() {
    std::lock_guard<std::mutex> lock(mu_);
    return groups_;
  }
  py::dict stats() const { return stats_dict(sched_.stats()); }

 private:
  void run(const std::vector<jv4::Scheduler::Job*>& group) {
    std::vector<int> ids;
    double ms = 0;
    bool fail = false;
    for (jv4::Scheduler::Job* j : group) {
      auto* p = static_cast<ProbeJob*>(j);
      ids.push_back(p->id);
      ms = std::max(ms, p->work_ms);
      fail = fail || p->work_ms < 0;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      groups_.push_back(ids);
    }
    std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(ms));
    if (fail) throw std::runtime_error("the group failed");
  }
  std::mutex mu_;
  std::vector<std::vector<int>> groups_;
  jv4::Scheduler sched_;  // last: its thread calls run()
};
}  // namespace

void register_stages(py::module_& parent) {
  py::class_<Stages> m(parent, "_stages", "the engine's pure stages, for tests");
  m.def_static(
      "load_policy",
      [](const std::vector<std::string>& tensor_types, bool x86, bool avx512_vnni, bool avx512_bf16, int n_gpus,
         const jv4::ModelOptions& options, const std::string& file_type,
         const std::vector<std::string>& tower_types, bool avx2) {
        jv4::FileFacts file;
        for (const std::string& t : tensor_types) file.tensor_types.push_back(type_named(t));
        jv4::BuildFacts build;
        build.x86 = x86;
        build.avx512_vnni = avx512_vnni;
        build.avx512_bf16 = avx512_bf16;
        build.avx2 = avx2;
        build.n_gpus = n_gpus;
        const jv4::LoadPolicy p = jv4::decide_load(file, build, options);
        py::dict out;
        out["n_gpu_layers"] = p.n_gpu_layers;
        out["main_gpu"] = p.main_gpu;
        out["cpu_only"] = p.cpu_only;
        out["f16_as_bf16"] = p.f16_as_bf16;
        out["repack"] = p.repack;
        out["tower_f16_as_bf16"] = p.tower_f16_as_bf16;
        out["tower_repack"] = p.tower_repack;
        out["load_mode"] = p.load_mode();
        out["kv_cache_type"] = jv4::decide_kv_cache_type(p, build, options, ftype_named(file_type));
        std::vector<int> tower;
        for (const std::string& t : tower_types) tower.push_back(type_named(t));
        out["tower_attention"] = jv4::decide_tower_attention(p, build, tower);
        return out;
      },
      py::arg("tensor_types"), py::arg("x86"), py::arg("avx512_vnni"), py::arg("avx512_bf16"), py::arg("n_gpus"),
      py::arg("options"), py::arg("file_type"), py::arg("tower_types") = std::vector<std::string>{},
      py::arg("avx2") = false,
      "the load decisions for a file holding tensors of these ggml types (and of this llama file type) "
      "on a build with these facts; tower_attention for a vision tower whose matrices have tower_types");
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
        return plan_tuple(jv4::plan_decodes(n_tokens, batch_tokens, max_seqs));
      },
      py::arg("n_tokens"), py::arg("batch_tokens"), py::arg("max_seqs"),
      "(empty texts, [(clear, [(text, seq, begin, end, last)])], longest)");
  m.def_static(
      "plan_segmented",
      [](const std::vector<std::vector<size_t>>& segments, int batch_tokens) {
        return plan_tuple(jv4::plan_segmented(segments, batch_tokens));
      },
      py::arg("segments"), py::arg("batch_tokens"),
      "segments: each sequence's segment lengths -> as plan_decodes");
  m.def_static(
      "resolve_request",
      [](const std::string& path, bool jina_v4, bool base, const std::string& task_of_file,
         const std::vector<std::string>& adapters, const std::vector<std::string>& projectors, int n_embd, bool vision,
         std::optional<std::string> task, const std::string& role, std::optional<int> dim, bool multivector,
         bool images) {
        jv4::RequestFacts f;
        f.path = path;
        f.jina_v4 = jina_v4;
        f.base = base;
        f.task = task_of_file;
        f.adapters = adapters;
        f.projectors = projectors;
        f.n_embd = n_embd;
        f.vision = vision;
        const jv4::Request r = images ? jv4::resolve_image_request(f, task, dim, multivector)
                                      : jv4::resolve_request(f, task, role, dim, true, multivector);
        return py::make_tuple(r.task, r.prefix, r.dim, jv4::allowed_dims(f));
      },
      py::arg("path"), py::arg("jina_v4"), py::arg("base"), py::arg("task_of_file"), py::arg("adapters"),
      py::arg("projectors"), py::arg("n_embd"), py::arg("vision"), py::arg("task"), py::arg("role"), py::arg("dim"),
      py::arg("multivector"), py::arg("images"),
      "the request policy for a model with these facts: (task, prefix, dim, allowed dims), or "
      "ArgumentError naming the argument");
  py::class_<SchedulerProbe>(m, "SchedulerProbe", "the scheduler alone over jobs that sleep (tests)")
      .def(py::init<int, int, bool, double>(), py::arg("batch_tokens"), py::arg("max_seqs"), py::arg("coalesce"),
           py::arg("batch_wait_ms") = 0.0)
      .def("submit", &SchedulerProbe::submit, py::arg("id"), py::arg("text") = true, py::arg("task") = "",
           py::arg("n_tokens") = 1, py::arg("n_texts") = 1, py::arg("work_ms") = 0.0,
           py::arg("cancel_after_ms") = py::none(), py::arg("fail") = false)
      .def("groups", &SchedulerProbe::groups, "the ids of each group run, in order")
      .def("stats", &SchedulerProbe::stats);
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
