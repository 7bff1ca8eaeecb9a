#include "agent/log.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tunnelagent::agent {
namespace {

using ::testing::HasSubstr;

constexpr char kTime[] = "2026-12-05T10:00:00.000Z";

TEST(LogTest, TextIsKeyValueQuotingWhatWouldNotSplitBack) {
  EXPECT_EQ(FormatLogLine(LogFormat::kText, kTime, "INFO", "tunnel.create",
                          {{"tunnel", "gre1"},
                           {"caller", "uid=0 pid=42"},
                           {"result", "OK"},
                           {"detail", ""},
                           {"error", "say \"no\"\nand go"}}),
            "2026-12-05T10:00:00.000Z INFO tunnel.create tunnel=gre1 caller=\"uid=0 pid=42\" "
            "result=OK detail=\"\" error=\"say \\\"no\\\"\\nand go\"");
}

TEST(LogTest, JsonIsOneObjectWithEveryFieldEscaped) {
  EXPECT_EQ(
      FormatLogLine(LogFormat::kJson, kTime, "WARNING", "tunnel.repair",
                    {{"tunnel", "gre1"}, {"detail", "tab\there \\ \x01"}}),
      "{\"time\":\"2026-12-05T10:00:00.000Z\",\"level\":\"WARNING\",\"msg\":\"tunnel.repair\","
      "\"tunnel\":\"gre1\",\"detail\":\"tab\\there \\\\ \\u0001\"}");
}

TEST(LogTest, HugeValuesAreCutSayingHowMuchWasLeftOut) {
  const std::string huge(3'000'000, 'n');
  for (LogFormat format : {LogFormat::kText, LogFormat::kJson}) {
    const std::string line =
        FormatLogLine(format, kTime, "INFO", "tunnel.create", {{"tunnel", huge}});
    EXPECT_LT(line.size(), 700u);
    EXPECT_THAT(line, HasSubstr("...(2999488 more bytes)"));
  }
}

TEST(LogTest, FormatIsTextOrJson) {
  EXPECT_TRUE(SetLogFormat("json").ok());
  EXPECT_EQ(CurrentLogFormat(), LogFormat::kJson);
  EXPECT_TRUE(SetLogFormat("text").ok());
  EXPECT_EQ(CurrentLogFormat(), LogFormat::kText);
  absl::Status bad = SetLogFormat("xml");
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.message(), HasSubstr("--log_format=xml: must be text or json"));
  EXPECT_EQ(CurrentLogFormat(), LogFormat::kText) << "unchanged by a refusal";
}

}  // namespace
}  // namespace tunnelagent::agent
