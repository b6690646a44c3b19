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
//
// A task that reaches that yielding phase also checks whether the task it waits for is waiting on
// the CPU it runs on itself. A woken worker is often placed on its waker's CPU, and the two tasks
// then take turns on one core while another idles: GRU 512/1/25's split steps took 30-40 us
// against 15 apart, and Linux left them so for seconds, across calls and pauses (docs/design.md,
// "Spinning"). A worker (never the caller's thread, task 0) that finds itself there moves to
// another CPU of its affinity mask (then gets its mask back), but only while some CPU is idle:
// with another process busy on the other core, moving there made steps 4-30x slower than taking
// turns (scripts/barrier_ab.py --busy). With each call starting on one CPU, ours took 0.38-0.90x
// TVM's time a step in two runs (barrier_ab.py --colocate), except calls shorter than the
// millisecond between tries, which mostly stay as they began; on a quiet machine nothing changed.

#ifndef _GNU_SOURCE
#define _GNU_SOURCE  // sched_getcpu, CPU_SET
#endif
#include <sched.h>
#ifdef __linux__
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#endif

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
// Where in its line a task notes, while it yields in a wait, the CPU it waits on plus one (else 0;
// before its first wait, whatever the launcher's allocation held, which may cost one needless
// move). TVM's launcher uses only the line's first int.
constexpr int kCpuSlot = 1;

#ifdef __linux__
// Whether fewer tasks are runnable in the whole system than `cpus` + 1 (/proc/loadavg's fourth
// field), so that with two of them sharing one CPU another is idle.
bool a_cpu_is_idle(int cpus) {
  int fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char text[128];
  ssize_t n = read(fd, text, sizeof text - 1);
  close(fd);
  if (n <= 0) return false;
  text[n] = '\0';
  const char* field = text;  // "0.52 0.58 0.59 3/187 4242": runnable/all after three averages
  for (int skip = 0; skip < 3 && field; ++skip) {
    field = strchr(field, ' ');
    if (field) ++field;
  }
  return field && atoi(field) <= cpus;
}

// Move the calling thread off `cpu` to another CPU of its mask, then give it its mask back (which
// moves nothing), while some CPU is idle; at most once a millisecond (reading /proc/loadavg
// costs a few us). Not where the mask holds `cpu` alone: the user pinned it there. With more than
// two CPUs in the mask the kernel picks which of the others (measured on two only).
void move_off(int cpu) {
  static thread_local timespec last_try{};
  timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  if (int64_t(now.tv_sec - last_try.tv_sec) * 1000000000 + (now.tv_nsec - last_try.tv_nsec) < 1000000) return;
  last_try = now;
  cpu_set_t mask;
  if (cpu < 0 || cpu >= CPU_SETSIZE || sched_getaffinity(0, sizeof mask, &mask) != 0 ||
      !CPU_ISSET(cpu, &mask) || CPU_COUNT(&mask) < 2 || !a_cpu_is_idle(CPU_COUNT(&mask))) {
    return;
  }
  cpu_set_t others = mask;
  CPU_CLR(cpu, &others);
  if (sched_setaffinity(0, sizeof others, &others) == 0) {
    sched_setaffinity(0, sizeof mask, &mask);
  }
}

int current_cpu() { return sched_getcpu(); }
#else
void move_off(int) {}
int current_cpu() { return -1; }
#endif

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
        continue;
      }
      // Once per wait, and only in a wait this long (with one task, TVM's launcher has no lines).
      if (spins == kSpins) {
        int cpu = current_cpu();
        if (task_id != 0 && cpu >= 0 &&
            counters[other * kSyncStride + kCpuSlot].load(std::memory_order_relaxed) == cpu + 1) {
          move_off(cpu);
          cpu = current_cpu();
        }
        counters[task_id * kSyncStride + kCpuSlot].store(cpu + 1, std::memory_order_relaxed);
      }
      sched_yield();
    }
    if (spins >= kSpins) counters[task_id * kSyncStride + kCpuSlot].store(0, std::memory_order_relaxed);
  }
  std::atomic_thread_fence(std::memory_order_acquire);
  return 0;
}
