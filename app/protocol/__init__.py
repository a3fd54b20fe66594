"""The 7-day protocol: recipes, the schedule planner, acceptance of step inputs and the dose arithmetic."""
