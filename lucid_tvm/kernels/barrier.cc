// The barrier the tasks of a parallel recurrence meet at once per step (lucid_tvm/barrier.py).
//
// TVM's protocol, unchanged: the launcher gives each task a counter (16 ints apart, one cache line
// each) zeroed at every launch; a task arriving at a barrier increments its own counter and waits
// until every other task's counter has caught up. TVM 0.27's TVMBackendParallelBarrier calls
// sched_yield() on every check of that wait, a system call each time; this one spins on the CPU's
// pause hint for the first kSpins checks (about 0.75 us on Zen 5, longer than tasks of one step
// usually wait for each other), then yields on every check as TVM's does, for when the partner
// has lost its CPU to another process. Spinning 128 or 1024 checks first was as fast on a quiet
// machine but 1.5-7x slower than TVM's with a process spinning on one of the two cores
// (scripts/barrier_ab.py --busy).

#include <sched.h>

#include <atomic>
#include <cstdint>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void relax() { _mm_pause(); }
#elif defined(__aarch64__) || defined(__arm__)
// Most Arm cores treat yield as almost a no-op, so the spin phase is shorter there (not measured:
// no Arm machine here).
static inline void relax() { __asm__ __volatile__("yield"); }
#else
static inline void relax() {}
#endif

namespace {

// TVMParallelGroupEnv of TVM's c_backend_api.h.
struct ParallelGroupEnv {
  void* sync_handle;
  int32_t num_task;
};

// TVM's kSyncStride: 64 bytes of std::atomic<int> per task.
constexpr int kSyncStride = 16;
constexpr unsigned kSpins = 32;

}  // namespace

extern "C" int lucid_tvm_parallel_barrier(int task_id, ParallelGroupEnv* env) {
  auto* counters = static_cast<std::atomic<int>*>(env->sync_handle);
  int arrived = counters[task_id * kSyncStride].fetch_add(1, std::memory_order_release);
  for (int other = 0; other < env->num_task; ++other) {
    if (other == task_id) continue;
    unsigned spins = 0;
    while (counters[other * kSyncStride].load(std::memory_order_relaxed) <= arrived) {
      if (++spins < kSpins) {
        relax();
      } else {
        sched_yield();
      }
    }
  }
  std::atomic_thread_fence(std::memory_order_acquire);
  return 0;
}
