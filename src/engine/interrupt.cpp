#include "src/engine/interrupt.h"

#include <atomic>
#include <csignal>

namespace reel {

namespace {
std::atomic<int> g_signals{0};

extern "C" void on_signal(int sig) {
    if (g_signals.fetch_add(1) >= 1) {
        // Second signal: the user insists; fall back to the default action.
        std::signal(sig, SIG_DFL);
        std::raise(sig);
    }
}
}  // namespace

void install_interrupt_handlers() {
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
}

bool interrupt_requested() {
    return g_signals.load() > 0;
}

void request_interrupt() {
    g_signals.store(1);
}

void clear_interrupt() {
    g_signals.store(0);
}

}  // namespace reel
