"""The benchmark suite (`metatele bench`): fixed problems split into meta-training, validation and held-out ones
(`problems`), lr-tuned baselines batched over a grid (`baselines`), runs through the shared inner step (`run`), the
field's statistics (`scores`), the report (`report`), meta-training of the adafac optimizer on the suite's
meta-training problems (`metatrain`), and the command (`suite`)."""
