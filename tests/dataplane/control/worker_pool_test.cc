#include "dataplane/control/worker_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <memory>
#include <set>
#include <string>
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
  // Holds the tunnels it is given, but refuses the names in `refuse`.
  absl::Status AddTunnel(const EngineTunnel& tunnel) override {
    if (refuse.count(tunnel.name)) return absl::ResourceExhaustedError("refused");
    tunnels.insert(tunnel.name);
    return absl::OkStatus();
  }
  absl::Status RemoveTunnel(const std::string& name) override {
    tunnels.erase(name);
    return absl::OkStatus();
  }
  // Records each change of peers; refuses a peer whose id is in `refuse_peers` (the rest done).
  absl::Status ChangePeers(const std::string& tunnel, std::vector<EnginePeer> upserted,
                           std::vector<uint32_t> removed) override {
    absl::Status first;
    for (const EnginePeer& peer : upserted) {
      if (refuse_peers.count(peer.id)) {
        first.Update(absl::InvalidArgumentError("peer refused"));
      } else {
        peers[tunnel].insert(peer.id);
      }
    }
    for (uint32_t id : removed) peers[tunnel].erase(id);
    return first;
  }
  DataplaneCountersSnapshot counters() const override { return counters_.Snapshot(); }
  const char* backend_name() const override { return "counting"; }

  // One packet that matched no tunnel: the drop is counted before the packet, so any reading
  // that takes rx_packets first (as Snapshot does) never sees more packets than drops.
  void CountUnmatchedPacket() {
    counters_.drops[static_cast<int>(kCounted)].Add();
    counters_.rx_packets.Add();
  }

  std::set<std::string> refuse;
  std::set<std::string> tunnels;
  std::set<uint32_t> refuse_peers;
  std::map<std::string, std::set<uint32_t>> peers;

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

EngineTunnel TunnelNamed(const std::string& name, unsigned workers) {
  EngineTunnel tunnel;
  tunnel.name = name;
  tunnel.device_fd = 0;  // the counting workers never use it
  tunnel.mtu = 1400;
  tunnel.stats = std::make_shared<TunnelStats>(workers);
  return tunnel;
}

// A batch: each tunnel answered on its own; one that a later worker refuses is taken back from
// the workers that took it, so the workers' sets agree.
TEST(WorkerPoolAddTunnelsTest, AnswersEachAndKeepsTheWorkersInAgreement) {
  Pool p = StartPool(2);
  ASSERT_NE(p.pool, nullptr);
  ASSERT_TRUE(p.pool->AddTunnel(TunnelNamed("old", 2)).ok());
  p.workers[1]->refuse.insert("c");
  std::vector<EngineTunnel> batch = {TunnelNamed("a", 2),   TunnelNamed("b", 2),
                                     TunnelNamed("a", 2),   TunnelNamed("c", 2),
                                     TunnelNamed("old", 2), TunnelNamed("d", 1)};
  const std::vector<absl::Status> answers = p.pool->AddTunnels(batch);
  ASSERT_EQ(answers.size(), batch.size());
  EXPECT_TRUE(answers[0].ok()) << answers[0];
  EXPECT_TRUE(answers[1].ok()) << answers[1];
  EXPECT_TRUE(absl::IsAlreadyExists(answers[2])) << answers[2];      // twice in the batch
  EXPECT_TRUE(absl::IsResourceExhausted(answers[3])) << answers[3];  // worker 1's answer
  EXPECT_TRUE(absl::IsAlreadyExists(answers[4])) << answers[4];      // added before
  EXPECT_TRUE(absl::IsInvalidArgument(answers[5])) << answers[5];    // counters for 1 worker
  const std::set<std::string> expected = {"old", "a", "b"};
  EXPECT_EQ(p.workers[0]->tunnels, expected);
  EXPECT_EQ(p.workers[1]->tunnels, expected);
  // Refused ones can come later; accepted ones are the pool's.
  p.workers[1]->refuse.clear();
  EXPECT_TRUE(p.pool->AddTunnel(TunnelNamed("c", 2)).ok());
  EXPECT_TRUE(absl::IsAlreadyExists(p.pool->AddTunnel(TunnelNamed("b", 2))));
}

// A change of peers reaches every worker before it is answered; a refusal is answered (the
// workers still agree: each did the rest); an unknown tunnel reaches none.
TEST(WorkerPoolChangePeersTest, EveryWorkerGetsItAndRefusalsAreAnswered) {
  Pool p = StartPool(3);
  ASSERT_NE(p.pool, nullptr);
  ASSERT_TRUE(p.pool->AddTunnel(TunnelNamed("mp", 3)).ok());
  EnginePeer one;
  one.id = 1;
  EnginePeer two;
  two.id = 2;
  ASSERT_TRUE(p.pool->ChangePeers("mp", {one, two}, {}).ok());
  for (CountingWorker* w : p.workers) EXPECT_EQ(w->peers["mp"], (std::set<uint32_t>{1, 2}));

  for (CountingWorker* w : p.workers) w->refuse_peers.insert(3);
  EnginePeer three;
  three.id = 3;
  const absl::Status refused = p.pool->ChangePeers("mp", {three}, {1});
  EXPECT_TRUE(absl::IsInvalidArgument(refused)) << refused;
  for (CountingWorker* w : p.workers) EXPECT_EQ(w->peers["mp"], (std::set<uint32_t>{2}));

  EXPECT_TRUE(absl::IsNotFound(p.pool->ChangePeers("nope", {one}, {})));
  for (CountingWorker* w : p.workers) EXPECT_EQ(w->peers.count("nope"), 0u);
}

// An addition begun is settled when waited for, and settled all the same when its answers are
// dropped unwaited: a tunnel a worker refused is taken back from the others either way.
TEST(WorkerPoolAddTunnelsTest, ABegunAdditionSettlesWaitedOrNot) {
  Pool p = StartPool(2);
  ASSERT_NE(p.pool, nullptr);
  p.workers[1]->refuse.insert("c");
  std::vector<EngineTunnel> first = {TunnelNamed("a", 2), TunnelNamed("c", 2)};
  {
    PendingAdditions begun = p.pool->BeginAddTunnels(first);
    // Not the pool's until settled.
    EXPECT_TRUE(absl::IsNotFound(p.pool->RemoveTunnel("a")));
  }
  const std::set<std::string> expected = {"a"};
  EXPECT_EQ(p.workers[0]->tunnels, expected);
  EXPECT_EQ(p.workers[1]->tunnels, expected);
  EXPECT_TRUE(absl::IsAlreadyExists(p.pool->AddTunnel(TunnelNamed("a", 2))));

  std::vector<EngineTunnel> second = {TunnelNamed("b", 2), TunnelNamed("c", 2)};
  const std::vector<absl::Status> answers = p.pool->BeginAddTunnels(second).Wait();
  ASSERT_EQ(answers.size(), 2u);
  EXPECT_TRUE(answers[0].ok()) << answers[0];
  EXPECT_TRUE(absl::IsResourceExhausted(answers[1])) << answers[1];
  EXPECT_TRUE(p.pool->RemoveTunnel("b").ok());
  EXPECT_TRUE(p.pool->RemoveTunnel("a").ok());
  EXPECT_TRUE(p.workers[0]->tunnels.empty());
  EXPECT_TRUE(p.workers[1]->tunnels.empty());
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
