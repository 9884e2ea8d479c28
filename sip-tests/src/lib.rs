//! Black-box tests that drive the real `dialbridge` binary with real SIP peers (SIPp, baresip).
