"""Speech data: dataset layouts, audio I/O, mu-law tokens and packed splits."""
