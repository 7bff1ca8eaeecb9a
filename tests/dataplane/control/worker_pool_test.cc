#include "dataplane/control/worker_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace tunnelagent::dataplane {
namespace {

constexpr DropReason kCounted = DropReason::kNoTunnel;

// A reading belongs to its reader: a reference into an engine's own sum would be rewritten by the
// next reader while this one still reads it.
static_assert(!std::is_reference_v<decltype(std::declval<const PacketEngine&>().counters())>,
              "PacketEngine::counters() must return a value");

// A worker that moves no packets: its counters are written by the test, one thread per worker,
// as an engine's thread would.
class CountingWorker final : public PacketEngine {
 public:
  absl::Status AddTunnel(const EngineTunnel&) override { return absl::OkStatus(); }
  absl::Status RemoveTunnel(const std::string&) override { return absl::OkStatus(); }
  DataplaneCountersSnapshot counters() const override { return counters_.Snapshot(); }
  const char* backend_name() const override { return "counting"; }

  // One packet that matched no tunnel: the drop is counted before the packet, so any reading
  // that takes rx_packets first (as Snapshot does) never sees more packets than drops.
  void CountUnmatchedPacket() {
    counters_.drops[static_cast<int>(kCounted)].Add();
    counters_.rx_packets.Add();
  }

 private:
  DataplaneCounters counters_;
};

struct Pool {
  std::unique_ptr<WorkerPool> pool;
  std::vector<CountingWorker*> workers;
};

Pool StartPool(unsigned workers) {
  Pool p;
  absl::StatusOr<std::unique_ptr<WorkerPool>> pool =
      WorkerPool::Start(workers, [&](unsigned) -> absl::StatusOr<std::unique_ptr<PacketEngine>> {
        auto worker = std::make_unique<CountingWorker>();
        p.workers.push_back(worker.get());
        return worker;
      });
  EXPECT_TRUE(pool.ok()) << pool.status();
  if (pool.ok()) p.pool = *std::move(pool);
  return p;
}

TEST(WorkerPoolCountersTest, SumsEveryWorker) {
  Pool p = StartPool(3);
  ASSERT_NE(p.pool, nullptr);
  for (int i = 0; i < 5; ++i) p.workers[0]->CountUnmatchedPacket();
  for (int i = 0; i < 7; ++i) p.workers[2]->CountUnmatchedPacket();
  DataplaneCountersSnapshot sum = p.pool->counters();
  EXPECT_EQ(sum.rx_packets, 12u);
  EXPECT_EQ(sum.drops[static_cast<int>(kCounted)], 12u);
  for (size_t r = 0; r < sum.drops.size(); ++r) {
    if (r != static_cast<size_t>(kCounted)) {
      EXPECT_EQ(sum.drops[r], 0u) << "reason " << r;
    }
  }
  // A reading is the caller's: later counting does not change it.
  p.workers[1]->CountUnmatchedPacket();
  EXPECT_EQ(sum.rx_packets, 12u);
  EXPECT_EQ(p.pool->counters().rx_packets, 13u);
}

// Scrapes from several threads while every worker counts: each reader's sum must be one reading
// of its own (no packets without their drop, never going back), and the last one exact. A sum
// shared between readers and rewritten by each (what a reference to the pool's own sum was)
// mixes one reader's packets with another's drops; TSan flags any such sharing of plain numbers.
TEST(WorkerPoolCountersTest, ConcurrentReadersEachGetAWholeSum) {
  constexpr unsigned kWorkers = 4;
  constexpr int kReaders = 3;
  constexpr int kPacketsPerWorker = 20000;
  Pool p = StartPool(kWorkers);
  ASSERT_NE(p.pool, nullptr);

  std::atomic<int> writers_left{static_cast<int>(kWorkers)};
  std::atomic<int> incoherent{0};
  std::atomic<int> backwards{0};
  std::atomic<uint64_t> readings{0};
  std::vector<std::thread> threads;
  for (CountingWorker* worker : p.workers) {
    threads.emplace_back([worker, &writers_left] {
      for (int i = 0; i < kPacketsPerWorker; ++i) worker->CountUnmatchedPacket();
      writers_left.fetch_sub(1);
    });
  }
  for (int r = 0; r < kReaders; ++r) {
    threads.emplace_back([&] {
      uint64_t last_rx = 0;
      // Bounded by the writers: they finish after kWorkers * kPacketsPerWorker counts.
      while (writers_left.load() > 0) {
        DataplaneCountersSnapshot sum = p.pool->counters();
        const uint64_t rx = sum.rx_packets;
        if (sum.drops[static_cast<int>(kCounted)] < rx) incoherent.fetch_add(1);
        if (rx < last_rx) backwards.fetch_add(1);
        last_rx = rx;
        readings.fetch_add(1);
      }
    });
  }
  for (std::thread& t : threads) t.join();

  EXPECT_EQ(incoherent.load(), 0) << "of " << readings.load() << " readings";
  EXPECT_EQ(backwards.load(), 0);
  DataplaneCountersSnapshot sum = p.pool->counters();
  EXPECT_EQ(sum.rx_packets, uint64_t{kWorkers} * kPacketsPerWorker);
  EXPECT_EQ(sum.drops[static_cast<int>(kCounted)], uint64_t{kWorkers} * kPacketsPerWorker);
}

}  // namespace
}  // namespace tunnelagent::dataplane
