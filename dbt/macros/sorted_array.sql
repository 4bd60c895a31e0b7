{#- The array sorted ascending. -#}
{% macro sorted_array(column) -%}
    {{ return(adapter.dispatch('sorted_array', 'postmodern')(column)) }}
{%- endmacro %}

{% macro default__sorted_array(column) -%}
    list_sort({{ column }})
{%- endmacro %}

{% macro snowflake__sorted_array(column) -%}
    array_sort({{ column }})
{%- endmacro %}
