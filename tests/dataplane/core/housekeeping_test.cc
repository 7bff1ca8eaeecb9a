// The worker's housekeeping schedule: a tick takes the tunnels that are due, earliest first;
// a tunnel whose housekeeping is brought forward (a send refused as too big) is taken at the
// next tick; a tunnel removed is never taken again; and many tunnels keep their own times.
#include <cerrno>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "dataplane/core/housekeeping_schedule.h"
#include "gtest/gtest.h"
#include "tests/dataplane/core/fake_packet_io.h"
#include "tests/dataplane/core/packet_builder.h"

namespace tunnelagent::dataplane::test {
namespace {

TEST(HousekeepingSchedule, TakesWhatIsDueEarliestFirstAndLeavesTheRest) {
  HousekeepingSchedule schedule;
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  schedule.Schedule(3, t0 + absl::Seconds(3));
  schedule.Schedule(1, t0 + absl::Seconds(1));
  schedule.Schedule(9, absl::InfinitePast());
  schedule.Schedule(2, t0 + absl::Seconds(2));
  std::vector<HousekeepingSchedule::Entry> due;
  schedule.TakeDue(t0 + absl::Seconds(2), due);
  ASSERT_EQ(due.size(), 3u);
  EXPECT_EQ(due[0].tunnel, 9u);
  EXPECT_EQ(due[1].tunnel, 1u);
  EXPECT_EQ(due[2].tunnel, 2u);
  EXPECT_EQ(schedule.size(), 1u);
  // Scheduled meanwhile, even in the past, waits for the next call.
  schedule.Schedule(4, t0);
  schedule.TakeDue(t0 - absl::Seconds(1), due);
  EXPECT_TRUE(due.empty());
  schedule.TakeDue(t0 + absl::Seconds(10), due);
  ASSERT_EQ(due.size(), 2u);
  EXPECT_EQ(due[0].tunnel, 4u);
  EXPECT_EQ(due[1].tunnel, 3u);
  EXPECT_EQ(schedule.size(), 0u);
}

// GRE tunnel `i` with key i: a receive match of its own.
EngineTunnel KeyedGre(int i) {
  EngineTunnel config = MakeTunnel(TunnelMode::kGre, absl::StrCat("t", i), 100 + i);
  config.has_input_key = true;
  config.input_key = static_cast<uint32_t>(i);
  config.encap.has_key = true;
  config.encap.key = static_cast<uint32_t>(i);
  return config;
}

TEST(Housekeeping, ASendRefusedAsTooBigBringsTheTunnelsTickForward) {
  CoreHarness h;
  h.io.route_mtu = 1500;
  TunnelDatapath& t = h.Add(KeyedGre(1));
  const absl::Time start = absl::Now();
  h.core.Tick(start);  // due at once after the add; next due seconds from now
  ASSERT_GT(t.next_tick(), start + absl::Seconds(1));
  const int probes = h.io.route_probes;

  CoreHarness::DeviceRead r = h.Read(t, InnerIcmp(1400 - 28));
  ASSERT_EQ(r.verdict, PacketCore::DeviceVerdict::kSend);
  t.TransmitDone(r.frame, r.read.len, -EMSGSIZE);
  h.core.Tick(start + absl::Milliseconds(50));
  EXPECT_EQ(h.io.route_probes, probes + 1) << "the route was not asked at the next tick";
  EXPECT_GT(t.next_tick(), start + absl::Seconds(1));
}

TEST(Housekeeping, ATunnelRemovedIsNotTakenAgain) {
  CoreHarness h;
  constexpr absl::Duration kInterval = absl::Seconds(10);
  std::vector<TunnelDatapath*> tunnels;
  for (int i = 1; i <= 2; ++i) {
    EngineTunnel config = KeyedGre(i);
    config.keepalive_interval = kInterval;
    tunnels.push_back(&h.Add(config));
  }
  const absl::Time start = absl::Now();
  h.core.Tick(start);
  EXPECT_EQ(h.io.underlay_sends.size(), 2u);
  h.core.EraseTunnel(tunnels[0]);
  h.core.Tick(start + kInterval);
  EXPECT_EQ(h.io.underlay_sends.size(), 3u);
  EXPECT_EQ(tunnels[1]->counters().keepalive_sent.Get(), 2u);
}

TEST(Housekeeping, ManyTunnelsEachKeepTheirOwnInterval) {
  CoreHarness h;
  constexpr int kTunnels = 40;
  std::vector<TunnelDatapath*> tunnels;
  for (int i = 1; i <= kTunnels; ++i) {
    EngineTunnel config = KeyedGre(i);
    config.keepalive_interval = absl::Seconds(i);
    tunnels.push_back(&h.Add(config));
  }
  // Ticks every 250 ms for 100 s: tunnel i sends at 0, i, 2i, ... seconds.
  const absl::Time start = absl::Now();
  for (int tick = 0; tick <= 400; ++tick) h.core.Tick(start + tick * absl::Milliseconds(250));
  for (int i = 1; i <= kTunnels; ++i) {
    EXPECT_EQ(tunnels[i - 1]->counters().keepalive_sent.Get(), static_cast<uint64_t>(100 / i + 1))
        << "tunnel t" << i;
  }
}

}  // namespace
}  // namespace tunnelagent::dataplane::test
