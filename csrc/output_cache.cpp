// The allocator behind empty_output (common.h): large CPU outputs of the extension's kernels.
//
// Why not at::empty: glibc maps every allocation over 32 MB afresh and unmaps it on free, so a
// 50 MB grad_feats pays for fresh, zeroed pages on every call (12k 4 KB page faults: 12-17 ms
// on a 2-core AMD EPYC, against ~4 ms for the kernel). A training loop asks for the same sizes
// every step, so freed blocks are kept and handed out again (exact size, most recently freed
// first), as PyTorch's CUDA caching allocator does; a reused block is already mapped. At most
// STAFAST_CPU_CACHE_MB (default 256) is kept; 0 turns the cache off.
//
// STAFAST_THP=1 also advises new blocks onto transparent huge pages (fewer, larger faults on
// first use). It is off by default: on the 2-core Intel Xeon VM we measured it on, the kernels
// ran 4-6x slower on advised memory, even on blocks that were already mapped.
#include "common.h"

#include <ATen/EmptyTensor.h>

#include <algorithm>
#include <cstdlib>
#include <list>
#include <mutex>
#include <string>
#ifdef __linux__
#include <sys/mman.h>
#endif

namespace stafast {
namespace {

constexpr size_t kHuge = size_t(1) << 21;

size_t env_megabytes(const char* name, size_t fallback_bytes) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback_bytes;
  char* end = nullptr;
  const long long n = std::strtoll(v, &end, 10);
  TORCH_CHECK(*end == '\0' && n >= 0, "stafast_ext: ", name, " must be a whole number of MB >= 0, got '", v, "'");
  return size_t(n) << 20;
}

struct Block {
  void* ptr;
  size_t size;
};

class OutputCache final : public c10::Allocator {
 public:
  OutputCache()
      : limit_(env_megabytes("STAFAST_CPU_CACHE_MB", size_t(256) << 20)), advise_([] {
          const char* v = std::getenv("STAFAST_THP");
          return v != nullptr && std::string(v) == "1";
        }()) {}

  c10::DataPtr allocate(size_t n) override {
    const size_t size = (std::max<size_t>(n, 1) + kHuge - 1) & ~(kHuge - 1);
    void* p = take(size);
    if (p == nullptr) {
      p = std::aligned_alloc(kHuge, size);
      TORCH_CHECK(p != nullptr, "stafast_ext: out of memory: could not allocate ", n, " bytes for an output");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
      if (advise_) madvise(p, size, MADV_HUGEPAGE);
#endif
    }
    return {p, new Block{p, size}, &OutputCache::release, c10::Device(c10::kCPU)};
  }

  void copy_data(void* dest, const void* src, size_t count) const override { default_copy_data(dest, src, count); }

  static void release(void* ctx) {
    auto* block = static_cast<Block*>(ctx);
    instance().put(*block);
    delete block;
  }

  static OutputCache& instance() {
    static auto* cache = new OutputCache();  // never destroyed: tensors may be freed after exit begins
    return *cache;
  }

  size_t cached_bytes() {
    std::lock_guard<std::mutex> lock(mu_);
    return cached_;
  }

  void clear() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& b : free_) std::free(b.ptr);
    free_.clear();
    cached_ = 0;
  }

 private:
  void* take(size_t size) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if (it->size == size) {
        void* p = it->ptr;
        cached_ -= size;
        free_.erase(it);
        return p;
      }
    }
    return nullptr;
  }

  void put(Block b) {
    std::lock_guard<std::mutex> lock(mu_);
    if (b.size > limit_) {
      std::free(b.ptr);
      return;
    }
    free_.push_front(b);
    cached_ += b.size;
    while (cached_ > limit_) {  // drop the least recently freed blocks
      cached_ -= free_.back().size;
      std::free(free_.back().ptr);
      free_.pop_back();
    }
  }

  const size_t limit_;
  const bool advise_;
  std::mutex mu_;
  std::list<Block> free_;  // most recently freed first
  size_t cached_ = 0;
};

}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const size_t nbytes = size_t(c10::multiply_integers(sizes)) * c10::elementSize(options.dtype().toScalarType());
  if (!options.device().is_cpu() || nbytes < 2 * kHuge) return at::empty(sizes, options);
  return at::detail::empty_generic(sizes, &OutputCache::instance(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   options.dtype().toScalarType(), std::nullopt);
}

int64_t output_cache_bytes() { return int64_t(OutputCache::instance().cached_bytes()); }

void output_cache_clear() { OutputCache::instance().clear(); }

}  // namespace stafast
