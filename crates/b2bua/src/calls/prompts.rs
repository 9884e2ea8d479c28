//! The prompts the relay plays to a leg: linear samples built once, encoded for the codec
//! the leg's peer took when played (`media::Prompt::with_codec`).

use media::g711::{Tone, G711};
use media::Prompt;
use std::sync::OnceLock;

/// The agent-confirm prompt: two short 660 Hz beeps, then 1.4 s of quiet, again and again
/// until the agent presses a key or the wait is over.
pub(crate) fn confirm() -> Prompt {
    static PROMPT: OnceLock<Prompt> = OnceLock::new();
    PROMPT
        .get_or_init(|| {
            // 8 kHz: 1,600 samples = 200 ms.
            let mut samples = vec![0i16; 8 * 2000];
            let mut tone = Tone::new(660.0);
            tone.fill(&mut samples[..1600]);
            tone.fill(&mut samples[3200..4800]);
            Prompt::from_samples(&samples, G711::Pcmu, true)
        })
        .clone()
}

/// What a held party hears: a 425 Hz tone of 400 ms every 2 s (a hold beep), until resumed.
pub(crate) const HOLD_TONE_HZ: f64 = 425.0;

pub(crate) fn hold_tone() -> Prompt {
    static PROMPT: OnceLock<Prompt> = OnceLock::new();
    PROMPT
        .get_or_init(|| {
            Prompt::tone(
                HOLD_TONE_HZ,
                std::time::Duration::from_millis(400),
                std::time::Duration::from_millis(1600),
                G711::Pcmu,
                true,
            )
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_confirm_prompt_loops_two_beeps_and_a_pause() {
        let p = confirm();
        assert!(p.looped());
        assert_eq!(p.duration(), Duration::from_secs(2));
        assert_eq!(p.with_codec(G711::Pcma).codec(), G711::Pcma);
    }

    #[test]
    fn the_hold_tone_loops_a_beep_every_two_seconds() {
        let p = hold_tone();
        assert!(p.looped());
        assert_eq!(p.duration(), Duration::from_secs(2));
    }
}
