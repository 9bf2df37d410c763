// jv4._core._stages: the engine's pure stages (batch planner, output stage)
// exposed alone, so tests can check them against independent references
// without a model. Not part of the public API.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "bindings/common.hpp"
#include "engine/batch_plan.hpp"
#include "engine/output.hpp"

namespace jv4py {

void register_stages(py::module_& parent) {
  py::module_ m = parent.def_submodule("_stages", "the engine's pure stages, for tests");
  m.def(
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
  m.def(
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
  m.def(
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
