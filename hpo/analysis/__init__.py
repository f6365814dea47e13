"""What a study found, from its trials (never from the store itself), and how it is drawn."""
