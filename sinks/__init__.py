"""Where incidents, detections, events and actions are delivered."""
