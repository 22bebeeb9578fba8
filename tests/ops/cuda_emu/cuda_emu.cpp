// The scheduler of cuda_emu.h: blocks of fibers, block barriers, warp shuffles, launch checks.
#include "cuda_emu.h"

#include <sys/mman.h>
#include <unistd.h>
#ifndef __x86_64__
#include <ucontext.h>
#endif

#include <cstdlib>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

extern "C" __attribute__((visibility("hidden"))) void cuda_emu_fiber_main();

namespace cuda_emu {
namespace {

// ---- a fiber's registers: switch_context saves the running one's and resumes another's ----
#ifdef __x86_64__
// The callee-saved registers of the System V ABI (and the SSE / x87 control words) go on the stack,
// the stack pointer into `from`; no system call, so a switch costs a few nanoseconds.
struct Context {
  void* sp = nullptr;
};
extern "C" void cuda_emu_switch(void** from, void* to);
extern "C" void cuda_emu_trampoline();
asm(R"(
  .text
  .globl cuda_emu_switch
  .hidden cuda_emu_switch
  .type cuda_emu_switch, @function
cuda_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size cuda_emu_switch, .-cuda_emu_switch

  .globl cuda_emu_trampoline
  .hidden cuda_emu_trampoline
  .type cuda_emu_trampoline, @function
cuda_emu_trampoline:
  call cuda_emu_fiber_main
  ud2
  .size cuda_emu_trampoline, .-cuda_emu_trampoline
)");

void switch_context(Context& from, Context& to) { cuda_emu_switch(&from.sp, to.sp); }

// A fresh fiber's stack, as cuda_emu_switch leaves a suspended one: its first switch "returns" into
// the trampoline, with the stack aligned for the call to cuda_emu_fiber_main.
void prepare(Context& c, void* stack, std::size_t bytes) {
  auto top = reinterpret_cast<std::uintptr_t>(stack) + bytes;
  top = (top & ~std::uintptr_t(15)) - 16;
  auto* slot = reinterpret_cast<std::uint64_t*>(top);
  slot[-1] = reinterpret_cast<std::uint64_t>(&cuda_emu_trampoline);
  for (int r = 2; r <= 7; ++r) slot[-r] = 0;  // rbp, rbx, r12-r15
  std::uint32_t mxcsr;
  std::uint16_t fpucw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  auto* csr = reinterpret_cast<unsigned char*>(&slot[-8]);
  std::memcpy(csr, &mxcsr, 4);
  std::memcpy(csr + 4, &fpucw, 2);
  c.sp = &slot[-8];
}
#else
struct Context {
  ucontext_t uc{};
};
void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
void prepare(Context& c, void* stack, std::size_t bytes) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = bytes;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, cuda_emu_fiber_main, 0);
}
#endif

constexpr int kWarp = 32;
constexpr std::size_t kStackBytes = 256 * 1024;  // per CUDA thread; the kernels keep small arrays

std::atomic<Schedule> g_schedule{Schedule::lowest_first};
std::atomic<bool> g_check_only{false};
std::atomic<unsigned> g_grid_y_limit{65535};
std::atomic<int> g_workers{0};

enum class State { runnable, at_barrier, at_shuffle, exited };

struct Thread {
  ThreadIds ids{};
  int index = 0, lane = 0, warp = 0;
  State state = State::runnable;
  unsigned barriers_passed = 0;
  Context context;
  void* stack = nullptr;
  // the shuffle this lane waits at
  int arg = 0, width = kWarp;
  std::size_t size = 0;
  unsigned char in[16]{}, out[16]{};
};

struct Group {  // lanes of a warp meeting at a shuffle with one mask
  unsigned mask, arrived;
  ShuffleKind kind;
  std::size_t size;
  std::source_location site;
};

struct Block {  // the block an OS thread runs (its threads reuse their stacks block after block)
  std::vector<Thread> threads;
  const std::function<void()>* body = nullptr;
  Context scheduler;  // the OS thread's own stack, which runs run_block
  bool lowest_first = true;
  int pos = 0;        // the thread that ran last
  int live = 0, exited_count = 0, waiting = 0;
  std::vector<unsigned> exited;             // per warp: lanes that returned
  std::vector<std::vector<Group>> groups;   // per warp: shuffles with lanes waiting
  std::source_location barrier_site;        // the __syncthreads the waiting threads are at
  unsigned barrier_pass = 0;                // and how many barriers they had passed before it
  std::string error;

  ~Block() {
    for (auto& t : threads)
      if (t.stack) munmap(t.stack, kStackBytes);
  }
};

thread_local Block* t_block = nullptr;
thread_local Thread* t_current = nullptr;

// ---- messages ----

std::string where(const std::source_location& loc) {
  std::string file = loc.file_name();
  const auto csrc = file.rfind("/csrc/");
  file = csrc != std::string::npos ? file.substr(csrc + 1) : file.substr(file.rfind('/') + 1);
  return file + ":" + std::to_string(loc.line());
}

bool same_site(const std::source_location& a, const std::source_location& b) {
  return a.line() == b.line() && a.column() == b.column() && std::strcmp(a.file_name(), b.file_name()) == 0;
}

// "0-31, 40, 42-43"
std::string ranges(const std::vector<int>& xs) {
  std::ostringstream s;
  for (std::size_t i = 0; i < xs.size();) {
    std::size_t j = i;
    while (j + 1 < xs.size() && xs[j + 1] == xs[j] + 1) ++j;
    s << (i ? ", " : "") << xs[i];
    if (j > i) s << "-" << xs[j];
    i = j + 1;
  }
  return s.str();
}

std::string lanes(unsigned mask) {
  std::vector<int> xs;
  for (int l = 0; l < kWarp; ++l)
    if (mask >> l & 1u) xs.push_back(l);
  return ranges(xs);
}

std::string threads_in(const Block& b, State s) {
  std::vector<int> xs;
  for (const auto& t : b.threads)
    if (t.state == s) xs.push_back(t.index);
  return ranges(xs);
}

std::string hex(unsigned mask) {
  std::ostringstream s;
  s << "0x" << std::hex << mask;
  return s.str();
}

const char* intrinsic(ShuffleKind k) {
  switch (k) {
    case ShuffleKind::idx: return "__shfl_sync";
    case ShuffleKind::up: return "__shfl_up_sync";
    case ShuffleKind::down: return "__shfl_down_sync";
    case ShuffleKind::bfly: return "__shfl_xor_sync";
    case ShuffleKind::syncwarp: return "__syncwarp";
  }
  return "?";
}

std::string block_name(const Block& b) {
  const auto& i = b.threads.front().ids;
  std::ostringstream s;
  s << "block (" << i.block_idx.x << ", " << i.block_idx.y << ", " << i.block_idx.z << ") of " << b.threads.size()
    << " threads";
  return s.str();
}

// ---- fibers ----

std::string deadlock(const Block& b);

// The next thread to run after b.pos, in schedule order; -1 if none can.
int pick(const Block& b) {
  const int n = int(b.threads.size());
  for (int step = 1; step <= n; ++step) {
    const int i = b.lowest_first ? (b.pos + step) % n : (b.pos - step + n) % n;
    if (b.threads[i].state == State::runnable) return i;
  }
  return -1;
}

// Suspends the running thread and resumes the next one straight away; back to run_block when the
// block is done, failed or stuck.
void yield() {
  Block& b = *t_block;
  Thread* me = t_current;
  const int next = b.error.empty() && b.live > 0 ? pick(b) : -1;
  if (next < 0 && b.error.empty() && b.live > 0) b.error = deadlock(b) + " (" + block_name(b) + ")";
  if (next < 0) {
    switch_context(me->context, b.scheduler);
    return;
  }
  b.pos = next;
  t_current = &b.threads[next];
  if (t_current != me) switch_context(me->context, t_current->context);
  t_current = me;  // resumed
}

// Records the first error of the block and leaves the fiber for good (the scheduler abandons the
// block: kernels hold no resources, so their stacks are reused as they are).
[[noreturn]] void fail(const std::string& what) {
  Block& b = *t_block;
  if (b.error.empty()) b.error = what + " (" + block_name(b) + ")";
  yield();
  std::abort();  // never resumed
}

unsigned warp_lanes(const Block& b, int warp) {  // the lanes warp `warp` has
  const int n = std::min<int>(kWarp, int(b.threads.size()) - warp * kWarp);
  return n == kWarp ? 0xffffffffu : (1u << n) - 1;
}

void thread_exits() {
  Block& b = *t_block;
  Thread& me = *t_current;
  me.state = State::exited;
  b.exited[me.warp] |= 1u << me.lane;
  ++b.exited_count;
  --b.live;
  if (b.waiting > 0)
    fail("__syncthreads at " + where(b.barrier_site) + " is reached by part of the block: threads " +
         threads_in(b, State::at_barrier) + " wait there, thread " + std::to_string(me.index) +
         " exited without reaching it");
  for (const auto& g : b.groups[me.warp])
    if (g.mask >> me.lane & 1u)
      fail(std::string(intrinsic(g.kind)) + " at " + where(g.site) + " with mask " + hex(g.mask) + ": lanes " +
           lanes(g.arrived) + " of warp " + std::to_string(me.warp) + " wait for lane " + std::to_string(me.lane) +
           ", which exited");
}

void fiber_body() {
  try {
    (*t_block->body)();
  } catch (const std::exception& e) {
    fail(std::string("the kernel threw: ") + e.what());
  } catch (...) {
    fail("the kernel threw");
  }
  thread_exits();
  yield();  // nothing comes back to an exited thread
  std::abort();
}

std::string deadlock(const Block& b) {
  std::string s = "deadlock: no thread can go on;";
  if (b.waiting > 0) s += " threads " + threads_in(b, State::at_barrier) + " wait at __syncthreads at " +
                          where(b.barrier_site) + ";";
  for (std::size_t w = 0; w < b.groups.size(); ++w)
    for (const auto& g : b.groups[w])
      s += std::string(" lanes ") + lanes(g.arrived) + " of warp " + std::to_string(w) + " wait at " +
           intrinsic(g.kind) + " at " + where(g.site) + " (mask " + hex(g.mask) + ") for lanes " +
           lanes(g.mask & ~g.arrived) + ";";
  return s;
}

void ensure_threads(Block& b, std::size_t n) {
  if (b.threads.size() == n) return;
  for (auto& t : b.threads)
    if (t.stack) munmap(t.stack, kStackBytes);
  b.threads.assign(n, Thread{});
  const long page = sysconf(_SC_PAGESIZE);
  for (auto& t : b.threads) {
    t.stack = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (t.stack == MAP_FAILED) throw Error("cuda_emu: out of memory for thread stacks");
    mprotect(t.stack, page, PROT_NONE);  // a guard page: an overflowing kernel faults instead of corrupting
  }
}

// Runs one block to its end; returns "" or the error it reported.
std::string run_block(Block& b, uint3 block_idx, dim3 grid, dim3 block, const std::function<void()>& body) {
  const int n = int(block.x * block.y * block.z);
  ensure_threads(b, n);
  const int warps = (n + kWarp - 1) / kWarp;
  b.body = &body;
  b.live = n;
  b.exited_count = b.waiting = 0;
  b.exited.assign(warps, 0);
  b.groups.assign(warps, {});
  b.error.clear();
  for (int i = 0; i < n; ++i) {
    Thread& t = b.threads[i];
    t.index = i;
    t.lane = i % kWarp;
    t.warp = i / kWarp;
    t.state = State::runnable;
    t.barriers_passed = 0;
    t.ids = {{unsigned(i) % block.x, unsigned(i) / block.x % block.y, unsigned(i) / (block.x * block.y)}, block_idx,
             block, grid};
    prepare(t.context, t.stack, kStackBytes);
  }
  b.lowest_first = g_schedule.load() == Schedule::lowest_first;
  b.pos = b.lowest_first ? 0 : n - 1;  // the first thread to run
  t_block = &b;
  t_current = &b.threads[b.pos];
  switch_context(b.scheduler, t_current->context);  // back when the block is done, failed or stuck
  t_block = nullptr;
  t_current = nullptr;
  return b.error;
}

std::string check_launch(dim3 grid, dim3 block, std::size_t shared_bytes) {
  std::ostringstream s;
  s << "invalid launch configuration: gridDim = (" << grid.x << ", " << grid.y << ", " << grid.z << "), blockDim = ("
    << block.x << ", " << block.y << ", " << block.z << "): ";
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  if (!grid.x || !grid.y || !grid.z) return s.str() + "every grid dimension must be at least 1";
  if (!block.x || !block.y || !block.z) return s.str() + "every block dimension must be at least 1";
  if (grid.x > 2147483647u) return s.str() + "gridDim.x must be at most 2147483647";
  if (grid.y > g_grid_y_limit.load()) return s.str() + "gridDim.y must be at most " + std::to_string(g_grid_y_limit);
  if (grid.z > 65535u) return s.str() + "gridDim.z must be at most 65535";
  if (block.x > 1024 || block.y > 1024 || block.z > 64)
    return s.str() + "blockDim must be at most (1024, 1024, 64)";
  if (threads > 1024) return s.str() + "a block has at most 1024 threads, this one " + std::to_string(threads);
  if (shared_bytes > 48 * 1024) return s.str() + "dynamic shared memory above 48 KB needs an opt-in";
  return "";
}

}  // namespace

void set_schedule(Schedule s) { g_schedule = s; }
void set_check_only(bool on) { g_check_only = on; }
void set_grid_y_limit(unsigned y) { g_grid_y_limit = y; }
unsigned grid_y_limit() { return g_grid_y_limit; }
void set_workers(int n) { g_workers = n; }

const ThreadIds& ids() {
  if (!t_current) throw Error("cuda_emu: threadIdx, blockIdx, blockDim and gridDim exist only inside a kernel");
  return t_current->ids;
}

void syncthreads(const std::source_location& loc) {
  Block& b = *t_block;
  Thread& me = *t_current;
  if (b.exited_count) {
    std::vector<int> gone;
    for (const auto& t : b.threads)
      if (t.state == State::exited) gone.push_back(t.index);
    fail("__syncthreads at " + where(loc) + " is reached by part of the block: threads " + ranges(gone) +
         " exited before it");
  }
  for (const auto& g : b.groups[me.warp])
    if (g.mask >> me.lane & 1u)
      fail("thread " + std::to_string(me.index) + " reaches __syncthreads at " + where(loc) + " while lanes " +
           lanes(g.arrived) + " of its warp wait for it at " + intrinsic(g.kind) + " at " + where(g.site));
  if (b.waiting == 0) {
    b.barrier_site = loc;
    b.barrier_pass = me.barriers_passed;
  } else if (!same_site(loc, b.barrier_site) || me.barriers_passed != b.barrier_pass) {
    fail("divergent __syncthreads: thread " + std::to_string(me.index) + " reaches the one at " + where(loc) +
         " after passing " + std::to_string(me.barriers_passed) + " barriers, while threads " +
         threads_in(b, State::at_barrier) + " wait at the one at " + where(b.barrier_site) + " after passing " +
         std::to_string(b.barrier_pass));
  }
  me.state = State::at_barrier;
  if (++b.waiting == b.live) {
    for (auto& t : b.threads)
      if (t.state == State::at_barrier) {
        t.state = State::runnable;
        ++t.barriers_passed;
      }
    b.waiting = 0;
  }
  yield();
}

namespace {

// The lane whose value `lane` receives, or -1 when the intrinsic gives it its own value.
int source_lane(ShuffleKind kind, int lane, int arg, int width) {
  const int base = lane & ~(width - 1), offset = lane & (width - 1);
  switch (kind) {
    case ShuffleKind::idx: return base + (arg & (width - 1));
    case ShuffleKind::up: return offset >= arg ? lane - arg : lane;
    case ShuffleKind::down: return offset + arg < width ? lane + arg : lane;
    case ShuffleKind::bfly: {
      const int src = lane ^ arg;
      return src < base + width ? src : lane;  // a later segment: the lane's own value
    }
    case ShuffleKind::syncwarp: return lane;
  }
  return lane;
}

void complete(Block& b, int warp, const Group& g) {
  for (int l = 0; l < kWarp; ++l) {
    if (!(g.mask >> l & 1u)) continue;
    Thread& t = b.threads[warp * kWarp + l];
    const int src = source_lane(g.kind, l, t.arg, t.width);
    if (src < 0 || src >= kWarp || !(g.mask >> src & 1u))
      fail(std::string(intrinsic(g.kind)) + " at " + where(g.site) + " with mask " + hex(g.mask) + ": lane " +
           std::to_string(l) + " of warp " + std::to_string(warp) + " reads lane " + std::to_string(src) +
           ", which the mask does not name");
    std::memcpy(t.out, b.threads[warp * kWarp + src].in, g.size);
    t.state = State::runnable;
  }
}

}  // namespace

void shuffle(ShuffleKind kind, unsigned mask, const void* in, void* out, std::size_t size, int arg, int width,
             const std::source_location& loc) {
  Block& b = *t_block;
  Thread& me = *t_current;
  // the messages are made only on failure: this is the emulator's hot path
  const auto at = [&] { return std::string(intrinsic(kind)) + " at " + where(loc) + " with mask " + hex(mask) + ": "; };
  const auto who = [&] { return "lane " + std::to_string(me.lane) + " of warp " + std::to_string(me.warp); };
  const auto of_warp = [&] { return " of warp " + std::to_string(me.warp); };
  if (width < 1 || width > kWarp || (width & (width - 1)))
    fail(at() + "width must be a power of 2 up to 32, got " + std::to_string(width));
  const unsigned bit = 1u << me.lane;
  if (!(mask & bit)) fail(at() + who() + " calls it, but the mask leaves it out");
  if (const unsigned missing = mask & ~warp_lanes(b, me.warp))
    fail(at() + "it names lanes " + lanes(missing) + of_warp() + ", which do not exist (the block has " +
         std::to_string(b.threads.size()) + " threads)");
  if (const unsigned gone = mask & b.exited[me.warp])
    fail(at() + "it names lanes " + lanes(gone) + of_warp() + ", which exited");
  if (b.waiting > 0) {  // lanes of this warp at __syncthreads cannot come
    unsigned at_barrier = 0;
    for (int l = 0; l < kWarp; ++l) {
      const std::size_t i = std::size_t(me.warp) * kWarp + l;
      if (i < b.threads.size() && b.threads[i].state == State::at_barrier) at_barrier |= 1u << l;
    }
    if (mask & at_barrier)
      fail(at() + "it names lanes " + lanes(mask & at_barrier) + of_warp() + ", which wait at __syncthreads at " +
           where(b.barrier_site));
  }
  auto& groups = b.groups[me.warp];
  Group* group = nullptr;
  for (auto& g : groups) {
    if (g.mask == mask) {
      group = &g;
    } else if (g.mask & mask) {
      fail(at() + who() + " meets lanes " + lanes(g.arrived) + ", which wait at " + intrinsic(g.kind) + " at " +
           where(g.site) + " with another mask, " + hex(g.mask));
    }
  }
  if (group && (group->kind != kind || group->size != size))
    fail(at() + who() + " meets lanes " + lanes(group->arrived) + " waiting at " + intrinsic(group->kind) + " at " +
         where(group->site) + ": the lanes of a mask must call the same intrinsic on values of one type");
  if (!group) {
    groups.push_back({mask, 0, kind, size, loc});
    group = &groups.back();
  }
  std::memcpy(me.in, in, size);
  me.arg = arg;
  me.width = width;
  me.state = State::at_shuffle;
  group->arrived |= bit;
  if (group->arrived == mask) {
    complete(b, me.warp, *group);
    groups.erase(groups.begin() + (group - groups.data()));
  }
  yield();
  std::memcpy(out, me.out, size);
}

void run(dim3 grid, dim3 block, std::size_t shared_bytes, const std::function<void()>& body) {
  if (t_current) throw Error("cuda_emu: a kernel launched another kernel (dynamic parallelism is not emulated)");
  if (const std::string bad = check_launch(grid, block, shared_bytes); !bad.empty()) throw Error(bad);
  if (g_check_only) return;
  const unsigned long long blocks = 1ull * grid.x * grid.y * grid.z;
  const int cores = std::max(1u, std::thread::hardware_concurrency());
  const int workers = int(std::min<unsigned long long>(blocks, g_workers > 0 ? g_workers.load() : cores));
  std::atomic<unsigned long long> next{0};
  std::atomic<bool> failed{false};
  std::mutex mutex;
  std::string first_error;
  // Blocks run on OS threads started for this launch: their shared memory (thread_local) starts as
  // zeros, not as what an earlier launch left there.
  auto work = [&] {
    Block local;
    for (unsigned long long i; !failed && (i = next++) < blocks;) {
      const uint3 idx{unsigned(i % grid.x), unsigned(i / grid.x % grid.y), unsigned(i / (1ull * grid.x * grid.y))};
      if (std::string e = run_block(local, idx, grid, block, body); !e.empty()) {
        std::lock_guard<std::mutex> lock(mutex);
        if (!failed.exchange(true)) first_error = e;
      }
    }
  };
  std::vector<std::thread> pool;
  for (int w = 0; w < workers; ++w) pool.emplace_back(work);
  for (auto& t : pool) t.join();
  if (failed) throw Error(first_error);
}

}  // namespace cuda_emu

void cuda_emu_fiber_main() { cuda_emu::fiber_body(); }
