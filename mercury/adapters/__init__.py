"""Chat platform adapters: each turns platform events into InboundMessage and sends replies."""
