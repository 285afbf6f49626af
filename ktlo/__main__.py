from ktlo.app.cli import main

main()
