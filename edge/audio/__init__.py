"""The ping'an loudspeaker: one player owns the output; clips, tones, speech and the
microphone are its sources; `Loudspeaker` is the stage's face to the station."""
