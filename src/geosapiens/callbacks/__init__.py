"""Lightning callbacks (EMA teacher, schedules, visualisation, prediction writing) and checkpoint IO."""
