// Python bindings of chunkattn_core._C: declarations and exports only.
#include <torch/extension.h>

#include "kernels/cpu/decode_attention.h"
#include "ops.h"
#include "prefix_tree.h"

namespace py = pybind11;
using chunkattn::KernelPlan;
using chunkattn::PartitionMode;
using chunkattn::PrefixTree;

namespace {

torch::Tensor to_tensor(const std::vector<int64_t>& values) {
  return torch::tensor(values, torch::dtype(torch::kInt64));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "chunkattn native core: chunk pool, prefix tree, kernel plan and decode attention kernels";
  py::register_exception<chunkattn::PoolExhausted>(m, "PoolExhaustedError", PyExc_RuntimeError);

  py::enum_<PartitionMode>(m, "PartitionMode")
      .value("auto", PartitionMode::kAuto)
      .value("chunk_first", PartitionMode::kChunkFirst)
      .value("sequence_first", PartitionMode::kSequenceFirst);

  py::class_<KernelPlan>(m, "KernelPlan")
      .def_readonly("num_seqs", &KernelPlan::num_seqs)
      .def_readonly("num_items", &KernelPlan::num_items)
      .def_readonly("num_partial_rows", &KernelPlan::num_partial_rows)
      .def_readonly("max_item_chunks", &KernelPlan::max_item_chunks)
      .def_readonly("max_item_seqs", &KernelPlan::max_item_seqs)
      .def_readonly("max_seq_chunks", &KernelPlan::max_seq_chunks)
      .def_readonly("version", &KernelPlan::version)
      .def("packed", [](const KernelPlan& p) { return torch::tensor(p.packed, torch::dtype(torch::kInt32)); });

  py::class_<PrefixTree>(m, "PrefixTree")
      .def(py::init<int32_t, int32_t, bool>(), py::arg("chunk_size"), py::arg("num_chunks"),
           py::arg("share_prefix") = true)
      .def_property_readonly("chunk_size", &PrefixTree::chunk_size)
      .def_property_readonly("num_chunks", &PrefixTree::num_chunks)
      .def_property_readonly("structure_version", &PrefixTree::structure_version)
      .def("match_prefix", &PrefixTree::match_prefix, py::arg("tokens"))
      .def("can_add", &PrefixTree::can_add, py::arg("tokens"))
      .def("add_sequence", &PrefixTree::add_sequence, py::arg("tokens"))
      .def("append_tokens",
           [](PrefixTree& t, const std::vector<int64_t>& ids, const std::vector<int32_t>& tokens) {
             return to_tensor(t.append_tokens(ids, tokens));
           },
           py::arg("seq_ids"), py::arg("tokens"))
      .def("remove_sequence", &PrefixTree::remove_sequence, py::arg("seq_id"), py::arg("cache") = true)
      .def("evict", &PrefixTree::evict, py::arg("num_chunks"))
      .def("clear_cache", &PrefixTree::clear_cache)
      .def("num_tokens", &PrefixTree::num_tokens, py::arg("seq_id"))
      .def("num_cached_tokens", &PrefixTree::num_cached_tokens, py::arg("seq_id"))
      .def("chunk_ids", &PrefixTree::chunk_ids, py::arg("seq_id"))
      .def("slots",
           [](const PrefixTree& t, int64_t id, int64_t start, int64_t end) {
             TORCH_CHECK(start <= end, "slots: start ", start, " > end ", end);
             auto out = torch::empty({end - start}, torch::dtype(torch::kInt64));
             t.slots(id, start, end, out.data_ptr<int64_t>());
             return out;
           },
           py::arg("seq_id"), py::arg("start"), py::arg("end"))
      .def("sequence_order", &PrefixTree::sequence_order)
      .def("plan", &PrefixTree::plan, py::arg("mode"), py::arg("max_item_chunks"),
           py::return_value_policy::reference_internal)
      .def("check_invariants", &PrefixTree::check_invariants)
      .def("stats", [](const PrefixTree& t) {
        const chunkattn::TreeStats s = t.stats();
        py::dict d;
        d["num_chunks"] = s.num_chunks;
        d["chunks_used"] = s.chunks_used;
        d["chunks_free"] = s.chunks_free;
        d["chunks_cached"] = s.chunks_cached;
        d["num_sequences"] = s.num_sequences;
        d["tokens"] = s.tokens;
        d["stored_tokens"] = s.stored_tokens;
        d["shared_tokens"] = s.shared_tokens;
        d["evictions"] = s.evictions;
        return d;
      });

  m.def("decode_attention", &chunkattn::decode_attention, py::arg("q"), py::arg("k_pool"), py::arg("v_pool"),
        py::arg("k_scale"), py::arg("v_scale"), py::arg("plan"), py::arg("plan_packed"), py::arg("out"),
        py::arg("partial_o"), py::arg("partial_lse"), py::arg("scale"), py::arg("num_threads"));
  m.def("small_batch_linear", &chunkattn::small_batch_linear, py::arg("x"), py::arg("weight"), py::arg("out"),
        py::arg("num_threads"));
  m.def("cpu_has_avx2", &chunkattn::cpu::has_avx2);
  m.def("built_with_cuda", &chunkattn::built_with_cuda);
}
