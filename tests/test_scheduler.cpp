// Flow-matching scheduler vs the golden tables (tests/data/golden/scheduler.*).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdio>

#include "diffusion/scheduler.h"
#include "tests/golden_util.h"
#include "weights/safetensors.h"

using namespace reel;

namespace {

const TensorMap& golden() {
    static TensorMap t = test::load_golden("scheduler.safetensors");
    return t;
}

}  // namespace

TEST(Scheduler, SigmaAndTimestepTablesAreBitExact) {
    for (double shift : {5.0, 8.0}) {
        FlowMatchScheduler s(shift);
        std::string p = shift == 5.0 ? "shift5." : "shift8.";
        at::Tensor sig = golden().at(p + "sigmas"), ts = golden().at(p + "timesteps");
        EXPECT_TRUE(at::equal(s.sigmas_tensor(), sig)) << p << "sigmas differ";
        EXPECT_TRUE(at::equal(s.timesteps_tensor(), ts)) << p << "timesteps differ";
        test::expect_close(s.sigmas_tensor(), golden().at(p + "sigmas_f64"), p + "sigmas vs f64", 1e-6, 1e-6);
        test::expect_close(s.timesteps_tensor(), golden().at(p + "timesteps_f64"), p + "timesteps vs f64", 1e-4, 1e-4);
    }
    FlowMatchScheduler s(5.0);
    EXPECT_EQ(s.sigmas()[0], 1.0f);
    EXPECT_NEAR(s.sigmas()[999], 0.00498008, 1e-8);
    EXPECT_NEAR(s.timesteps()[999], 4.98008, 1e-5);
}

TEST(Scheduler, WarpedStepListAndLookup) {
    FlowMatchScheduler s(5.0);
    std::vector<float> w = s.warp_steps({1000, 750, 500, 250});
    at::Tensor ref = golden().at("selfforcing.step_list_warped");
    ASSERT_EQ(static_cast<int64_t>(w.size()), ref.numel());
    for (size_t i = 0; i < w.size(); ++i)
        EXPECT_EQ(w[i], ref[i].item<float>()) << "step " << i;
    EXPECT_EQ(w[2], 833.3333129882812f);
    // sigma lookup table from the json
    struct Case {
        float t;
        int64_t index;
        float sigma;
    };
    for (Case c :
         {Case{1000.0f, 0, 1.0f}, Case{937.5f, 250, 0.9375f}, Case{833.3333129882812f, 500, 0.8333333134651184f},
          Case{625.0f, 750, 0.625f}, Case{0.0f, 999, 0.004980080295354128f}, Case{750.0f, 625, 0.7500000596046448f},
          Case{500.0f, 833, 0.5005995631217957f}, Case{250.0f, 937, 0.25159743428230286f}}) {
        EXPECT_EQ(s.index_of(c.t), c.index) << "t=" << c.t;
        EXPECT_EQ(s.sigma_at(c.t), c.sigma) << "t=" << c.t;
    }
    EXPECT_THROW(s.warp_steps({1000.5}), std::runtime_error);
    // A different shift and an unwarped list are configurable.
    FlowMatchScheduler s8(8.0);
    EXPECT_NE(s8.warp_steps({1000, 750})[1], w[1]);
}

TEST(Scheduler, FlowToX0AndAddNoise) {
    FlowMatchScheduler s(5.0);
    const TensorMap& g = golden();
    // Rows are [N, C, H, W] with one timestep per row.
    at::Tensor x0 = s.flow_to_x0(g.at("conv.flow_pred"), g.at("conv.xt"), g.at("conv.timestep"));
    test::expect_close(x0, g.at("conv.x0_pred"), "conv.x0_pred");
    EXPECT_TRUE(at::equal(x0, g.at("conv.x0_pred"))) << "flow_to_x0 not bit-exact";
    at::Tensor xn = s.add_noise(g.at("conv.x0_pred"), g.at("conv.noise"), g.at("conv.t_next"));
    test::expect_close(xn, g.at("conv.add_noise_out"), "conv.add_noise_out");
    EXPECT_TRUE(at::equal(xn, g.at("conv.add_noise_out"))) << "add_noise not bit-exact";
    at::Tensor fl = s.x0_to_flow(g.at("conv.x0_pred"), g.at("conv.xt"), g.at("conv.timestep"));
    test::expect_close(fl, g.at("conv.flow_from_x0"), "conv.flow_from_x0");
    // [B, F, ...] layout with t [B, F] gives the same numbers.
    at::Tensor x0b = s.flow_to_x0(g.at("conv.flow_pred").unsqueeze(0), g.at("conv.xt").unsqueeze(0),
                                  g.at("conv.timestep").unsqueeze(0));
    EXPECT_TRUE(at::equal(x0b.squeeze(0), x0));
}
