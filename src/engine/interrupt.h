// Ctrl-C / SIGTERM handling for long runs: the first signal asks the run to stop after the current chunk
// (so the video written so far is finalized and playable); a second one kills the process as usual.
#pragma once

namespace reel {

void install_interrupt_handlers();
bool interrupt_requested();
// For tests and for errors mid-run that should stop the loop the same way.
void request_interrupt();
void clear_interrupt();

}  // namespace reel
