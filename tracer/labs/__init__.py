"""Labs: experiments that run the engine and replay to produce the walkthroughs' tables and traces."""
