//! DNA and audio files into token streams and labeled examples.
